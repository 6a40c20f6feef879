#!/usr/bin/env python3
"""ipc_hostile.py SOCKET - a hostile dashkvd client: handshakes by hand, then
tries to shrink the shared region, opens a real sequence and submits forged
descriptors for it (offsets, sizes, layers, counts, reserved fields, NaN),
steps for sequences it does not own, forges the completion ring's head and
overruns the submission ring.  The daemon must answer with error
completions, count what it drops and stay alive; a valid step of the same
session still works afterwards.  Exit 0 on success."""
import mmap, os, socket, struct, sys, time

HDR = struct.Struct("<IHHII")
MAGIC, VERSION, HELLO, ACCEPT, OPEN, OPEN_OK, ERROR = 0x564B4444, 1, 1, 2, 3, 4, 12
SQE = struct.Struct("<QIIIIQQQQ4I")   # struct ipc_sqe, 72 bytes
CQE = struct.Struct("<Qii")           # user, status, reserved (+ 112 msg)
CFG = struct.Struct("<IIIIIiQIiIIIIIfifi15I")  # dkv_seq_config, 136 bytes
DKV_E_INVAL, DKV_E_BADINPUT, DKV_E_PROTO, DKV_E_NOTFOUND = -1, -2, -7, -9
L, QH, KVH, HD = 2, 4, 2, 64

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

def recv_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            sys.exit("the daemon closed the socket")
        buf += chunk
    return buf

# a real sequence: f32, 2 layers, 4 query heads, 2 kv heads, head_dim 64
cfg = CFG.pack(CFG.size, L, QH, KVH, HD, 0, 4096, 0, 0, 0, 0, 0, 0, 0,
               0.0, -1, 0.0, -1, *([0] * 15))
s.sendall(HDR.pack(MAGIC, VERSION, OPEN, CFG.size, 2) + cfg)
_, _, typ, length, _ = HDR.unpack(recv_exact(HDR.size))
body = recv_exact(length)
assert typ == OPEN_OK, (typ, body[8:80])
seq_id = struct.unpack_from("<I", body)[0]

def u32(off, val=None):
    if val is None:
        return struct.unpack_from("<I", m, off)[0]
    struct.pack_into("<I", m, off, val)

sq_tail = 0
cq_head = 0

def wait_cq(n):
    # generous: the daemon may run under a sanitizer on a loaded machine
    end = time.time() + 10
    while (u32(cq_ctl + 64) - n) & 0x80000000:
        if time.time() > end:
            sys.exit("no completion from the daemon")
        time.sleep(0.002)

def submit(user, sid, layer, n_q, n_new, q, k, v, out, res=(0, 0, 0, 0)):
    """One descriptor; returns the completion's status."""
    global sq_tail, cq_head
    SQE.pack_into(m, sqes + SQE.size * (sq_tail % entries), user, sid, layer,
                  n_q, n_new, q, k, v, out, *res)
    sq_tail = (sq_tail + 1) & 0xffffffff
    u32(sq_ctl + 64, sq_tail)
    wait_cq(cq_head + 1)
    c = cqes + 128 * (cq_head % entries)
    got_user, status, _ = CQE.unpack_from(m, c)
    cq_head += 1
    u32(cq_ctl, cq_head)
    assert got_user == user, (got_user, user)
    return status

qb, kb = QH * HD * 4, KVH * HD * 4
big = 1 << 62
cases = [
    # (what, seq, layer, n_q, n_new, q_off, k_off, v_off, out_off, reserved, want)
    ("q outside", seq_id, 0, 1, 0, arena_size, 0, 0, 0, (0,) * 4, DKV_E_INVAL),
    ("out outside", seq_id, 0, 1, 0, 0, 0, 0, arena_size - 8, (0,) * 4, DKV_E_INVAL),
    ("k wraps", seq_id, 0, 0, 1, 0, 2**64 - 64, 0, 0, (0,) * 4, DKV_E_INVAL),
    ("v huge", seq_id, 0, 0, 1, 0, 0, big, 0, (0,) * 4, DKV_E_INVAL),
    ("huge n_q", seq_id, 0, 0xffffffff, 0, 0, 0, 0, 0, (0,) * 4, DKV_E_INVAL),
    ("huge n_new", seq_id, 0, 0, 0xffffffff, 0, 0, 0, 0, (0,) * 4, DKV_E_INVAL),
    ("misaligned", seq_id, 0, 1, 0, 2, 0, 0, 4096, (0,) * 4, DKV_E_INVAL),
    ("layer", seq_id, 7, 1, 0, 0, 0, 0, 4096, (0,) * 4, DKV_E_INVAL),
    ("reserved", seq_id, 0, 1, 0, 0, 0, 0, 4096, (0, 0, 1, 0), DKV_E_PROTO),
    ("other seq", seq_id + 1000, 0, 5, 5, big, big, big, big, (0,) * 4, DKV_E_NOTFOUND),
    ("seq 0", 0, 0, 1, 0, 0, 0, 0, 4096, (0,) * 4, DKV_E_NOTFOUND),
]
user = 100
for what, sid, layer, nq, nn, q, k, v, out, res, want in cases:
    user += 1
    st = submit(user, sid, layer, nq, nn, q, k, v, out, res)
    assert st == want, (what, st, want)

# NaN in a key: refused, nothing stored
struct.pack_into("<%df" % (KVH * HD), m, arena + 8192, *([float("nan")] * (KVH * HD)))
struct.pack_into("<%df" % (KVH * HD), m, arena + 16384, *([0.5] * (KVH * HD)))
st = submit(200, seq_id, 0, 0, 1, 0, 8192, 16384, 0)
assert st == DKV_E_BADINPUT, st

# a valid step of the same session still works: q, k, v of ones
ones_q = struct.pack("<%df" % (QH * HD), *([1.0] * (QH * HD)))
m[arena:arena + qb] = ones_q
struct.pack_into("<%df" % (KVH * HD), m, arena + 8192, *([0.25] * (KVH * HD)))
st = submit(201, seq_id, 1, 1, 1, 0, 8192, 16384, 32768)
assert st == 0, st
out = struct.unpack_from("<%df" % (QH * HD), m, arena + 32768)
assert all(abs(x - 0.5) < 1e-6 for x in out), out[:4]   # one token: out = v

# a forged completion head (far ahead of the tail): the daemon drops the
# completion rather than overwrite entries, and carries on
u32(cq_ctl, cq_head + 5 * entries)
SQE.pack_into(m, sqes + SQE.size * (sq_tail % entries), 300, 9, 0, 0, 0,
              0, 0, 0, 0, 0, 0, 0, 0)
sq_tail += 1
u32(sq_ctl + 64, sq_tail)
time.sleep(0.2)
assert u32(cq_ctl + 64) == cq_head, "completion posted past a forged head"
u32(cq_ctl, cq_head)

# an overrun: the tail far ahead of the head
sq_tail += 100 * entries
u32(sq_ctl + 64, sq_tail)
time.sleep(0.2)
# the session still answers after the overrun
st = submit(302, 9, 0, 0, 0, 0, 0, 0, 0)
assert st == DKV_E_NOTFOUND, st
st = submit(303, seq_id, 1, 1, 0, 0, 0, 0, 32768)
assert st == 0, st
s.close()

# hash_model on the wire: the client's pointer in dkv_seq_config is never
# read (a wild one opens a plain sequence), a relative path is refused,
# a path without its NUL ends the session; the daemon stays up
OPEN_MODEL, FEAT_MODEL, PATHLEN = 20, 4, 1024
CFGP = struct.Struct("<IIIIIiQIiIIIIIfifi4xQ12I")  # with hash_model, 136 bytes
assert CFGP.size == CFG.size
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(HDR.pack(MAGIC, VERSION, HELLO, 16, 1) + struct.pack("<IIQ", 1 | FEAT_MODEL, 0, 1 << 20))
msg, fds, _, _ = socket.recv_fds(s, 4096, 4)
assert HDR.unpack_from(msg)[2] == ACCEPT, msg[:16]
assert struct.unpack_from("<I", msg, 16)[0] & FEAT_MODEL, "no IPC_FEAT_MODEL"
for fd in fds:
    os.close(fd)

def request(typ, payload, seq):
    s.sendall(HDR.pack(MAGIC, VERSION, typ, len(payload), seq) + payload)
    _, _, rtyp, length, _ = HDR.unpack(recv_exact(HDR.size))
    body = recv_exact(length)
    return rtyp, (struct.unpack_from("<i", body)[0] if rtyp == ERROR else None)

def cfgp(hash_, ptr):
    return CFGP.pack(CFGP.size, L, QH, KVH, HD, 0, 4096, 0, hash_, 0, 0, 0, 0, 0,
                     0.0, -1, 0.0, -1, ptr, *([0] * 12))

typ, _ = request(OPEN, cfgp(2, 0x4141414141414141), 3)
assert typ == OPEN_OK, typ
path = b"x.model".ljust(PATHLEN, b"\0")
assert request(OPEN_MODEL, cfgp(2, 0) + path, 4) == (ERROR, DKV_E_INVAL)
assert request(OPEN_MODEL, cfgp(2, 0) + b"/" * PATHLEN, 5) == (ERROR, DKV_E_PROTO)
assert s.recv(1) == b"", "the session should end"
s.close()
print("hostile client: %d forged descriptors refused, session still works; "
      "hash_model forgeries refused" % (len(cases) + 1))
