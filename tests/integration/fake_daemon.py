#!/usr/bin/env python3
"""fake_daemon.py SOCKET sealed|unsealed|pipe - a dashkvd impostor for one
client: it answers HELLO with a well-formed ACCEPT whose shared region is a
memfd sealed as dashkvd seals it (sealed), the same memfd without seals
(unsealed), or a pipe (pipe).  libdashkv-client must map only the first:
an unsealed file could shrink under its mapping.  Prints "ready" once it
listens; serves one connection, then waits for the client to hang up."""
import fcntl, os, socket, struct, sys

HDR = struct.Struct("<IHHII")
MAGIC, VERSION, HELLO, ACCEPT = 0x564B4444, 1, 1, 2
FEAT_RING = 0x1
SQ_CTL, CQ_CTL, SQES, CQES, ARENA, ARENA_SIZE, ENTRIES = 0, 1024, 4096, 8192, 12288, 65536, 8
REGION = ARENA + ARENA_SIZE

path, kind = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(1)
print("ready", flush=True)
c, _ = srv.accept()
hdr = c.recv(HDR.size, socket.MSG_WAITALL)
magic, ver, typ, length, seq = HDR.unpack(hdr)
c.recv(length, socket.MSG_WAITALL)
if typ != HELLO:
    sys.exit("no HELLO: type %d" % typ)
if kind == "pipe":
    fd, _ = os.pipe()
else:
    fd = os.memfd_create("fake-session", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, REGION)
    if kind == "sealed":
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
body = struct.pack("<IIQ", FEAT_RING, 0, REGION) + \
    struct.pack("<QQQQQQII", SQ_CTL, CQ_CTL, SQES, CQES, ARENA, ARENA_SIZE, ENTRIES, 0)
socket.send_fds(c, [HDR.pack(MAGIC, VERSION, ACCEPT, len(body), seq) + body], [fd])
c.recv(1)  # until the client hangs up
