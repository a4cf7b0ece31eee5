import socket, struct, time
def req(body):
    return struct.pack('<I', len(body)) + body
stats = req(bytes([0x08, 0x01, 0x12, 0x00]))
gl = req(bytes([0x08, 0x01, 0x32, 0x00]))   # get_limit = field 6 -> tag 0x32
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect('/tmp/obs-x/s.sock.ctl')
def rt(frame, n):
    t0 = time.perf_counter()
    for i in range(n):
        s.sendall(frame)
        hdr = b''
        while len(hdr) < 4: hdr += s.recv(4 - len(hdr))
        ln = struct.unpack('<I', hdr)[0]; got = 0
        while got < ln: got += len(s.recv(ln - got))
    return (time.perf_counter() - t0) / n * 1e6
print("getlimit rt %.1f us" % rt(gl, 80))
print("stats rt %.1f us" % rt(stats, 80))
