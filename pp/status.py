"""python -m pp.status URL [--watch] [--interval S] [--token SECRET]

Prints, in a terminal, the picture the status page of a pp.Server
(status_port=...) or a ppserver (--status-port) shows: nodes, local
workers, queue, jobs per second over the last minute, the job-time
histogram and recent errors. Once, or refreshed until Ctrl-C (--watch).
URL is the page's address (server.status_url). A page bound to another
address than loopback needs the cluster secret: --token, else PP_SECRET.
"""
import json
import os
import sys
import time
import urllib.error
import urllib.request

BARS = " \u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588"


def fetch(url, token=None, timeout=5.0):
    """The /status JSON of the page at url, as a dict."""
    if not url.endswith("/"):
        url += "/"
    req = urllib.request.Request(url + "status")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode("utf-8", "replace"))


def _sec(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return "%.0f us" % (s * 1e6)
    if s < 1:
        return "%.1f ms" % (s * 1e3)
    if s < 120:
        return "%.2f s" % s
    return "%.1f min" % (s / 60)


def _bytes(b):
    if b is None or b < 0:
        return "-"
    if b < 1 << 20:
        return "%.0f KiB" % (b / 1024)
    if b < 1 << 30:
        return "%.1f MiB" % (b / 1048576)
    return "%.2f GiB" % (b / 1073741824)


def _table(headers, rows, right=()):
    cols = [headers] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cols) for i in range(len(headers))]
    out = []
    for k, r in enumerate(cols):
        cells = [(c.rjust(w[i]) if i in right else c.ljust(w[i])) for i, c in enumerate(r)]
        out.append("  " + "  ".join(cells).rstrip())
        if k == 0:
            out.append("  " + "  ".join("-" * x for x in w))
    return out


def render(s, url=""):
    """The terminal picture of one /status snapshot, as text."""
    up = [n for n in s["nodes"] if n["state"] == "up"]
    lines = ["ppc %s status  %s  (engine up %s)" % (s["role"], url, _sec(s["uptime_seconds"])), ""]
    lines.append("  nodes up %d/%d   cores %d   jobs done %d   jobs/s (1 min) %.1f   queued %d"
                 "   pending %d   errors %d" % (
                     len(up), len(s["nodes"]), sum(n["cores"] for n in up), s["jobs_done"],
                     s["jobs_per_second_1m"], s["queue"], s["pending"], s["errors_total"]))
    series = s["jobs_per_second"]
    top = max(series) or 1
    spark = "".join(BARS[min(8, (v * 8 + top - 1) // top)] for v in series)
    lines += ["", "jobs per second, last minute (max %d/s):" % top, "  |" + spark + "|"]
    h = s["histogram"]
    labels = ["<= " + _sec(b) for b in h["bounds_seconds"]] + ["more"]
    hmax = max(h["counts"]) or 1
    lines += ["", "job time histogram (%d jobs, mean %s):" % (
        h["count"], _sec(h["sum_seconds"] / h["count"]) if h["count"] else "-")]
    for lab, c in zip(labels, h["counts"]):
        if c:
            lines.append("  %10s %-40s %d" % (lab, "#" * max(1, c * 40 // hmax), c))
    lines += ["", "nodes:"]
    lines += _table(
        ["node", "address", "state", "cores", "running", "jobs", "job time", "link"],
        [[n["name"], n["address"], n["state"], n["cores"], n["inflight"], n["jobs"],
          _sec(n["job_seconds"]),
          "in process" if not n["link"] else "%s, auth %s" % (
              "TLS" if n["link"]["tls"] else "no TLS", n["link"]["auth"])]
         for n in s["nodes"]], right=(3, 4, 5, 6))
    lines += ["", "local workers:"]
    if s["workers"]:
        lines += _table(["pid", "state", "current job", "jobs", "RSS"],
                        [[w["pid"], w["state"], _sec(w["job_age_seconds"]), w["jobs"],
                          _bytes(w["rss_bytes"])] for w in s["workers"]], right=(0, 2, 3, 4))
    else:
        lines.append("  none")
    if s["role"] == "ppserver":
        lines += ["", "clients:"]
        lines += _table(["peer", "state", "active", "link"],
                        [[c["peer"], c["state"], c["active"], "%s, auth %s" % (
                            "TLS" if c["link"]["tls"] else "no TLS", c["link"]["auth"])]
                         for c in s["clients"]], right=(2,)) if s["clients"] else ["  none"]
    lines += ["", "recent errors:"]
    if not s["errors"]:
        lines.append("  none")
    for e in s["errors"][:5]:
        lines.append("  %s  %s on %s: %s" % (time.strftime("%H:%M:%S", time.localtime(e["time"])),
                                             e["type"], e["node"], e["message"]))
    if s["errors"] and s["errors"][0]["traceback"]:
        lines.append("  latest traceback:")
        lines += ["    " + ln for ln in s["errors"][0]["traceback"].rstrip().splitlines()[-8:]]
    return "\n".join(lines) + "\n"


def main(argv=None, token=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    watch, interval, url = False, 2.0, None
    token = token or None
    while argv:
        a = argv.pop(0)
        if a == "--watch":
            watch = True
        elif a == "--interval" and argv:
            interval = float(argv.pop(0))
        elif a == "--token" and argv:
            token = argv.pop(0)
        elif a in ("-h", "--help"):
            print(__doc__.strip())
            return 0
        elif url is None and not a.startswith("-"):
            url = a
        else:
            sys.stderr.write("pp.status: unexpected argument %s\n\n%s\n" % (a, __doc__.strip()))
            return 2
    if not url:
        sys.stderr.write(__doc__.strip() + "\n")
        return 2
    if "://" not in url:
        url = "http://" + url
    token = token or os.environ.get("PP_SECRET") or None
    try:
        while True:
            try:
                text = render(fetch(url, token), url)
            except urllib.error.HTTPError as e:
                text = "pp.status: %s answered %d %s\n" % (url, e.code, e.reason)
                if not watch:
                    sys.stderr.write(text)
                    return 1
            except (OSError, ValueError) as e:
                text = "pp.status: cannot read %s: %s\n" % (url, e)
                if not watch:
                    sys.stderr.write(text)
                    return 1
            if watch:
                sys.stdout.write("\x1b[H\x1b[2J" + text)
                sys.stdout.flush()
                time.sleep(interval)
            else:
                sys.stdout.write(text)
                return 0
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
