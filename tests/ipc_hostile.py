#!/usr/bin/env python3
"""ipc_hostile.py SOCKET - a hostile dashkvd client: handshakes by hand, then
tries to shrink the shared region, submits steps for sequences it does not
own and overruns the submission ring.  The daemon must answer with error
completions, count what it drops and stay alive.  Exit 0 on success."""
import mmap, os, socket, struct, sys, time

HDR = struct.Struct("<IHHII")
MAGIC, VERSION, HELLO, ACCEPT, ERROR = 0x564B4444, 1, 1, 2, 12
DKV_E_NOTFOUND = -9

s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(HDR.pack(MAGIC, VERSION, HELLO, 16, 1) + struct.pack("<IIQ", 1, 0, 1 << 20))
msg, fds, _, _ = socket.recv_fds(s, 4096, 4)
magic, ver, typ, length, seq = HDR.unpack_from(msg)
assert typ == ACCEPT and len(fds) == 1, (typ, fds)
feat, res, region = struct.unpack_from("<IIQ", msg, 16)
sq_ctl, cq_ctl, sqes, cqes, arena, arena_size, entries, _ = \
    struct.unpack_from("<QQQQQQII", msg, 32)
fd = fds[0]
try:
    os.ftruncate(fd, 4096)
    sys.exit("the region could be shrunk")
except OSError:
    pass
m = mmap.mmap(fd, region)

def u32(off, val=None):
    if val is None:
        return struct.unpack_from("<I", m, off)[0]
    struct.pack_into("<I", m, off, val)

def wait_cq(n):
    # generous: the daemon may run under a sanitizer on a loaded machine
    end = time.time() + 10
    while u32(cq_ctl + 64) < n:
        if time.time() > end:
            sys.exit("no completion from the daemon")
        time.sleep(0.005)

# a step for a sequence this session never opened, with wild offsets
struct.pack_into("<QIIIIQQQQ4I", m, sqes, 77, 1, 0, 5, 5,
                 1 << 62, 1 << 62, 1 << 62, 1 << 62, 0, 0, 0, 0)
u32(sq_ctl + 64, 1)
wait_cq(1)
user, status = struct.unpack_from("<Qi", m, cqes)
assert user == 77 and status == DKV_E_NOTFOUND, (user, status)
# an overrun: the tail far ahead of the head
u32(sq_ctl + 64, 1 + 100 * entries)
time.sleep(0.2)
# the session still answers after the overrun
struct.pack_into("<QIIIIQQQQ4I", m, sqes + 72 * ((1 + 100 * entries) % entries),
                 78, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
u32(sq_ctl + 64, 2 + 100 * entries)
wait_cq(2)
user, status = struct.unpack_from("<Qi", m, cqes + 128)
assert user == 78 and status == DKV_E_NOTFOUND, (user, status)
s.close()
print("hostile client: ok")
