#!/usr/bin/env python3
"""The egress world's listeners (tests/egress/world.sh starts them with
`ip netns exec`): each `tcp:ADDRESS:PORT:TEXT` argument is a TCP listener
that answers TEXT and a newline to whatever line it is sent, then closes;
each `dns:ADDRESS:PORT:ANSWER` a UDP DNS server that answers every A query,
for any name, with the address ANSWER (other query types get no records)."""

import socket
import sys
import threading


def tcp(address, port, text):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(64)

    def answer(connection):
        with connection:
            connection.settimeout(3)
            try:
                connection.recv(256)
                connection.sendall(text.encode() + b"\n")
            except OSError:
                pass

    while True:
        connection, _ = server.accept()
        threading.Thread(target=answer, args=(connection,), daemon=True).start()


def dns(address, port, answer):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((address, port))
    record = socket.inet_aton(answer)
    while True:
        query, peer = server.recvfrom(1500)
        if len(query) < 12:
            continue
        # Skip the question's name to find its type.
        at = 12
        while at < len(query) and query[at] != 0:
            at += 1 + query[at]
        qtype = query[at + 1:at + 3]
        question_end = at + 5
        is_a = qtype == b"\x00\x01"
        reply = bytearray(query[:question_end])
        reply[2] = 0x81 | (query[2] & 0x01)  # response, RD copied
        reply[3] = 0x80  # RA, NOERROR
        reply[4:12] = b"\x00\x01" + (b"\x00\x01" if is_a else b"\x00\x00") + b"\x00\x00\x00\x00"
        if is_a:
            reply += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + record
        server.sendto(bytes(reply), peer)


def main():
    threads = []
    for spec in sys.argv[1:]:
        kind, address, port, value = spec.split(":", 3)
        target = tcp if kind == "tcp" else dns
        thread = threading.Thread(target=target, args=(address, int(port), value), daemon=True)
        thread.start()
        threads.append(thread)
    print("listening", flush=True)
    for thread in threads:
        thread.join()


main()
