#!/usr/bin/env bash
# Builds .gpu/: the Python packages that the lent GPU machine's image lacks (it has torch, numpy, pandas, pyarrow,
# aiohttp, grpcio, ...; no ray, omegaconf, webdataset), for its Python 3.12, to be carried with a device call and
# installed by benchmarks/gpu_session.sh. Needs pip's package index. About 3 minutes (xz is the slow part).
#   bash benchmarks/pack_gpu_packages.sh [DEST]   # default .gpu; about 46 MB
# The ray wheel (79 MB) is more than a device call carries (64 MiB in all), so ray goes as an unpacked tree
# without RLlib, LLM serving, the Java jars and the tests, compressed with xz (27 MB).
set -euo pipefail
DEST=${1:-.gpu}
PY=${PY:-.venv/bin/python}
platform=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# what the image lacks, as wheel file names begin (the image's package list: the device tool's KINDS.md)
missing=(omegaconf braceexpand webdataset torch_fidelity
         jsonschema jsonschema_specifications referencing rpds_py tensorboardx pydantic pydantic_core annotated_types
         typing_inspection typing_extensions aiohttp_cors colorful opencensus opencensus_context google_api_core
         google_auth googleapis_common_protos proto_plus pyasn1 pyasn1_modules cryptography cffi pycparser py_spy
         smart_open virtualenv distlib platformdirs python_discovery opentelemetry_api opentelemetry_sdk
         opentelemetry_semantic_conventions opentelemetry_exporter_prometheus opentelemetry_proto)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "downloading wheels for Python 3.12 ..."
"$PY" -m pip download -q "${platform[@]}" -d "$work/wheels" "ray[train,tune,default]==2.60.0"
# distgan's own needs beyond the image, without their dependencies (torch-fidelity's torch is on the image)
"$PY" -m pip download -q --no-deps "${platform[@]}" -d "$work/wheels" omegaconf==2.4.0 webdataset==1.0.2 \
    braceexpand==0.1.7 torch-fidelity==0.4.0
mkdir -p "$DEST"
rm -f "$DEST"/*.whl "$DEST"/*.tar.xz  # one version of each: two would stop the install there
for name in "${missing[@]}"; do
    # a wheel's name is NAME-VERSION-...: match the name exactly (pydantic, not pydantic_core)
    found=$(find "$work/wheels" -maxdepth 1 -iname "${name}-[0-9]*.whl")
    [ -n "$found" ] || { echo "no wheel for $name" >&2; exit 1; }
    find "$work/wheels" -maxdepth 1 -iname "${name}-[0-9]*.whl" -exec cp {} "$DEST/" \;
done
echo "repacking ray ..."
mkdir "$work/ray"
ray_wheel=$(find "$work/wheels" -maxdepth 1 -name "ray-2.60.0-*.whl")
unzip -q "$ray_wheel" -d "$work/ray"  # unzip keeps the executables' mode (gcs_server, raylet)
rm -rf "$work/ray/ray/rllib" "$work/ray/ray/llm" "$work/ray/ray/jars"  # RLlib, LLM serving, Java: unused
find "$work/ray" -type d \( -name tests -o -name __pycache__ \) -prune -exec rm -rf {} +
tar -C "$work/ray" -cf - . | xz -T0 -9 > "$DEST/ray-2.60.0-cp312-site.tar.xz"
du -sh "$DEST"
