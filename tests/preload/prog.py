# prog.py: a Python program for scripts/test-preload.sh, run with and without
# libheapd-malloc.so; its output must be the same. Dicts and strings by the
# hundred thousand, threads, fork without exec (the child changes what it
# inherited; the parent must not see it), fork+exec (subprocess), extension
# modules loaded with dlopen (json's, sqlite3's, decimal's).
import decimal, hashlib, json, os, sqlite3, subprocess, sys, threading

d = {i: "v%d" % (i * 7) for i in range(300000)}
for i in range(0, 300000, 3):
    del d[i]
h = hashlib.sha256()
for k in sorted(d)[:1000]:
    h.update(d[k].encode())
print("dict", len(d), h.hexdigest()[:16])

results = [0] * 16
def work(n):
    local = {}
    for i in range(20000):
        local[(n, i)] = [i] * (i % 5)
    results[n] = sum(len(v) for v in local.values())
ts = [threading.Thread(target=work, args=(n,)) for n in range(16)]
for t in ts: t.start()
for t in ts: t.join()
print("threads", sum(results))

shared = {"k%d" % i: list(range(i % 10)) for i in range(50000)}
pid = os.fork()
if pid == 0:
    for k in list(shared)[:25000]:
        del shared[k]                    # frees and writes what the parent also holds
    shared["child"] = "x" * 100000
    os._exit(0 if len(shared) == 25001 else 1)
_, st = os.waitpid(pid, 0)
print("fork child", os.waitstatus_to_exitcode(st), "parent still has", len(shared), "child" in shared,
      sum(len(v) for v in shared.values()))

out = subprocess.run([sys.executable, "-c", "print(sum(range(10**6)))"], capture_output=True, text=True)
print("subprocess", out.stdout.strip(), out.returncode)

print("json", len(json.dumps({str(i): [i, str(i)] for i in range(20000)})))
db = sqlite3.connect(":memory:")
db.execute("create table t(a, b)")
db.executemany("insert into t values (?, ?)", ((i, str(i) * 3) for i in range(20000)))
print("sqlite3 module", db.execute("select count(*), sum(length(b)) from t").fetchone())
decimal.getcontext().prec = 50
print("decimal", decimal.Decimal(1) / decimal.Decimal(7))
