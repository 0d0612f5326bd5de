from distgan.bench.main import main
from distgan.cli import run_main

run_main(main)
