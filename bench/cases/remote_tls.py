# bench/cases/remote_tls.py - case 8: what TLS costs on the node links,
# side by side with a cleartext link in the same run. One node on
# 127.0.0.1 (this interpreter: pp.Server(2, _listen=...), 2 workers, the
# same as ppserver -w 2), a client pp.Server(ncpus=0) connected to it.
#   --impl ppc:       the real link, TLS 1.3 with the PSK from the secret
#   --impl ppc_plain: the same engine with TLS off on both sides, a private
#                     switch for this comparison (_test={"tls_plaintext":
#                     1}; a client without it refuses a node offering it)
#   --case remote_tls_tiny: tiny jobs (x + 1), one submit each, 100,000
#                     (quick 20,000) after a warm-up; jobs/s
#   --case remote_tls_echo: 4 x 64 MB bytes echoed by the node (submit all
#                     4, then take the results) after a small warm-up;
#                     MB/s of payload one way
# Only 127.0.0.1 is used; the node is killed at the end.
import secrets
import subprocess
import sys

import common

NODE = """
import sys, time, pp
plain = sys.argv[3] == "1"
s = pp.Server(2, secret=sys.argv[2], _listen=("127.0.0.1", int(sys.argv[1])),
              _test={"tls_plaintext": True} if plain else None)
print("ready", flush=True)
time.sleep(600)
"""


def tiny(x):
    return x + 1


def echo(x):
    return x


def main(args):
    impl = args.impl
    if impl not in ("ppc", "ppc_plain"):
        raise ValueError("remote_tls has no %s variant" % impl)
    pp = common.import_pp("ppc")
    extra = common.pp_info(pp)
    plain = impl == "ppc_plain"
    port, secret = common.free_port(), secrets.token_urlsafe(32)
    common.PHASE[0] = "start node"
    node = subprocess.Popen([sys.executable, "-c", NODE, str(port), secret, "1" if plain else "0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    common.register_node(node)
    if node.stdout.readline().strip() != b"ready":
        raise RuntimeError("the node did not start (exit %s)" % node.poll())
    common.PHASE[0] = "client connect + warm-up"
    c = pp.Server(ncpus=0, ppservers=("127.0.0.1:%d" % port,), secret=secret,
                  _test={"tls_plaintext": True} if plain else None)
    if c.submit(tiny, (1,))() != 2:
        raise RuntimeError("wrong warm-up result")
    if args.case == "remote_tls_tiny":
        n = 20000 if args.quick else 100000
        [j() for j in [c.submit(tiny, (i,)) for i in range(1000)]]
        common.PHASE[0] = "run"
        t = common.time_tiny(c, tiny, n)
        extra.update(value=n / t, unit="jobs/s", jobs=n, seconds=t, workers=2)
    else:
        mb = 16 if args.quick else 64
        if c.submit(echo, (b"w" * (1 << 20),))() != b"w" * (1 << 20):
            raise RuntimeError("wrong warm-up echo")
        payloads = [bytes([65 + i]) * (mb << 20) for i in range(4)]
        common.PHASE[0] = "run"
        t0 = common.now()
        jobs = [c.submit(echo, (p,)) for p in payloads]
        res = [j() for j in jobs]
        t = common.now() - t0
        if any(r != p for r, p in zip(res, payloads)):
            raise RuntimeError("wrong echo")
        extra.update(value=4 * mb / t, mb_per_s=4 * mb / t, unit="MB/s", seconds=t, mb=mb)
    return extra


if __name__ == "__main__":
    common.run(main, common.parse_args())
