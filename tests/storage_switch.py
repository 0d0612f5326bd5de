"""A TCP proxy in front of the test cluster's S3 stand-in, with an outage switch: while the file SWITCH exists, every
open connection is cut and new ones are closed at once, as when a bucket's endpoint is unreachable.

    python tests/storage_switch.py LISTEN_PORT TARGET_PORT SWITCH      (on 127.0.0.1; stopped by its PID)
"""

import socket
import sys
import threading
import time
from pathlib import Path


def pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, target):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main() -> None:
    listen_port, target_port, switch = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    open_sockets: list[socket.socket] = []
    lock = threading.Lock()

    def cut_when_down() -> None:
        while True:
            if switch.exists():
                with lock:
                    for s in open_sockets:
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                    open_sockets.clear()
            time.sleep(0.1)

    threading.Thread(target=cut_when_down, daemon=True).start()
    server = socket.create_server(("127.0.0.1", listen_port))
    print("listening", flush=True)
    while True:
        client, _ = server.accept()
        if switch.exists():
            client.close()
            continue
        upstream = socket.create_connection(("127.0.0.1", target_port))
        with lock:
            open_sockets.extend((client, upstream))
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


if __name__ == "__main__":
    main()
