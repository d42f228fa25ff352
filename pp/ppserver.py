"""ppserver: make this machine a node of a pp cluster.

Options as pp's ppserver.py. The daemon itself (listening socket,
authentication, job relay, worker pool, heartbeats, discovery) is the C
engine; this module parses options and the config file, handles signals,
the pid file and the idle timeout.
"""
import configparser
import getopt
import logging
import os
import signal
import sys
import time

USAGE = """Parallel Python Network Server (pp-%(version)s)
Usage: ppserver [-hdar] [-f format] [-n proto] [-c config_path] [-i interface]
                [-b broadcast] [-p port] [-w nworkers] [-s secret] [-t seconds]
                [-k seconds] [-P pid_file] [--secret-file path] [--new-secret]
                [--certfile path --keyfile path --cafile path] [--connect host:port]
                [--status-port port] [--status-host host]
       ppserver --status [--watch] [--status-port port] [--status-host host] [-s secret]

Options:
-h                 : this help message
-d                 : set log level to debug
-f format          : log format
-a                 : enable auto-discovery service
-r                 : restart worker process after each task completion
-n proto           : protocol number for pickle module
-c path            : path to config file
-i interface       : interface to listen on
-b broadcast       : broadcast address for auto-discovery service
-p port            : port to listen on (default 60000)
-w nworkers        : number of workers to start (default: one per core)
-s secret          : secret for authentication; visible to other local users
                     (ps, /proc): prefer --secret-file or PP_SECRET
--secret-file path : read the secret from this file (chmod 600)
--new-secret       : print a strong random secret and exit
--certfile path    : TLS with certificates instead of a secret: this node's
--keyfile path       certificate and key, and the CA that signed the
--cafile path        clients' certificates (all three, PEM)
-t seconds         : exit when no client has been connected for that long
                     (--connect: when the client was unreachable that long)
-k seconds         : liveness: a silent client is dropped after this long
                     (default 3600); jobs may run longer
-P pid_file        : file to write the process id to
--connect host:port: dial that client instead of listening (connect-back:
                     no inbound port here); redialed with backoff when lost
--status-port port : serve a status page, /status, /metrics and /health on
                     this port (0: a free one, logged); config: status_port
--status-host host : its address (default 127.0.0.1; any other requires the
                     secret as a bearer token); config: status_host
--status           : print the status of the ppserver whose status page is on
                     --status-port (and --status-host) and exit; --watch:
                     refresh it every 2 s until Ctrl-C

A secret (or certificates) is required: there is no built-in default.
Make one with --new-secret, store it in a file only you can read, and give
it with --secret-file, the config file ([general] secret_file = ... or
secret = ...), the PP_SECRET variable, or pp_secret = '...' in
~/.pythonrc.py. Every connection is TLS 1.3 (README "Security").
"""


# command-line options that turn a setting on, and those that set one from
# their argument (setting, conversion); the others are handled one by one
_FLAGS = {"-d": "debug", "-a": "autodiscovery", "-r": "restart", "--status": "show_status",
          "--watch": "watch"}
_SETTINGS = {
    "-f": ("format", str), "-n": ("proto", int), "-i": ("interface", str),
    "-b": ("broadcast", str), "-p": ("port", int), "-w": ("workers", int),
    "-t": ("timeout", float), "-k": ("socket_timeout", float), "-P": ("pid_file", str),
    "--certfile": ("certfile", str), "--keyfile": ("keyfile", str), "--cafile": ("cafile", str),
    "--status-port": ("status_port", int), "--status-host": ("status_host", str),
}


def _parse(argv):
    opts, args = getopt.getopt(argv, "hdarn:c:b:i:p:w:s:t:f:k:P:",
                               ["secret-file=", "new-secret", "certfile=", "keyfile=",
                                "cafile=", "connect=", "status-port=", "status-host=", "status",
                                "watch"])
    cfg = {
        "debug": False, "format": "%(asctime)s %(levelname)s %(message)s",
        "autodiscovery": False, "restart": False, "proto": 5, "interface": "0.0.0.0",
        "broadcast": "255.255.255.255", "port": 60000, "workers": "autodetect",
        "secret": None, "timeout": None, "socket_timeout": 3600.0, "pid_file": None,
        "discover_port": 51000, "secret_file": None, "certfile": None, "keyfile": None,
        "cafile": None, "secret_on_cmdline": False, "connect": None,
        "status_port": None, "status_host": None,
        "show_status": False, "watch": False,
    }
    config_path = None
    for o, a in opts:
        if o == "-c":
            config_path = a
    if config_path:
        cp = configparser.ConfigParser()
        if not cp.read(config_path):
            raise SystemExit("ppserver: cannot read config file %s" % config_path)
        g = cp["general"] if cp.has_section("general") else {}
        n = cp["network"] if cp.has_section("network") else {}
        conv = {
            ("general", "secret"): ("secret", str), ("general", "workers"): ("workers", int),
            ("general", "debug"): ("debug", _bool), ("general", "proto"): ("proto", int),
            ("general", "restart"): ("restart", _bool), ("general", "pid_file"): ("pid_file", str),
            ("network", "autodiscovery"): ("autodiscovery", _bool),
            ("network", "interface"): ("interface", str),
            ("network", "broadcast"): ("broadcast", str), ("network", "port"): ("port", int),
            ("network", "timeout"): ("timeout", float),
            ("network", "socket_timeout"): ("socket_timeout", float),
            ("network", "discovery_port"): ("discover_port", int),
            ("general", "secret_file"): ("secret_file", str),
            ("general", "certfile"): ("certfile", str), ("general", "keyfile"): ("keyfile", str),
            ("general", "cafile"): ("cafile", str),
            ("network", "status_port"): ("status_port", int),
            ("network", "status_host"): ("status_host", str),
        }
        for (sec, key), (name, fn) in conv.items():
            src = g if sec == "general" else n
            if key in src:
                cfg[name] = fn(src[key])
    for o, a in opts:
        if o in _FLAGS:
            cfg[_FLAGS[o]] = True
        elif o in _SETTINGS:
            name, fn = _SETTINGS[o]
            cfg[name] = fn(a)
        elif o == "-h":
            print(USAGE % {"version": _version()})
            raise SystemExit(0)
        elif o == "-s":
            cfg["secret"] = a
            cfg["secret_file"] = None
            cfg["secret_on_cmdline"] = True
        elif o == "--secret-file":
            cfg["secret_file"] = a
            cfg["secret"] = None
        elif o == "--new-secret":
            from pp import new_secret
            print(new_secret())
            raise SystemExit(0)
        elif o == "--connect":
            host, sep, port = a.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise getopt.GetoptError("--connect wants host:port, not %r" % a)
            cfg["connect"] = (host.strip("[]"), int(port))
    if args:
        raise getopt.GetoptError("unexpected arguments: %s" % " ".join(args))
    if cfg["secret_file"]:
        from pp import read_secret_file
        try:
            cfg["secret"] = read_secret_file(cfg["secret_file"])
        except OSError as e:
            raise ValueError("cannot read the secret file: %s" % e)
    if not cfg["secret"] and not cfg["certfile"]:
        # PP_SECRET, then pp's classic pp_secret in ~/.pythonrc.py
        from pp import _user_secret
        cfg["secret"] = _user_secret() or None
    return cfg


def _show_status(cfg):
    """ppserver --status: the terminal picture of python -m pp.status."""
    if cfg["status_port"] is None:
        sys.stderr.write("ppserver: --status needs the status page's port: --status-port PORT "
                         "(or status_port in the config file)\n")
        return 2
    from pp import status
    host = cfg["status_host"] or "127.0.0.1"
    if ":" in host:
        host = "[%s]" % host
    url = "http://%s:%d/" % (host, cfg["status_port"])
    argv = [url] + (["--watch"] if cfg["watch"] else [])
    return status.main(argv, token=cfg["secret"])


def _bool(v):
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def _version():
    import pp
    return pp.__version__


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = _parse(argv)
    except (getopt.GetoptError, ValueError) as e:
        sys.stderr.write("ppserver: %s\n\n" % e)
        sys.stderr.write(USAGE % {"version": _version()})
        return 2
    if cfg["show_status"]:
        return _show_status(cfg)
    if not cfg["secret"] and not cfg["certfile"]:
        sys.stderr.write(
            "ppserver: refusing to start without a secret: anyone who can reach the port "
            "could run code here.\nMake one with 'ppserver --new-secret', keep it in a file "
            "only you can read and give it with --secret-file PATH, with 'secret_file = "
            "...' in the [general] section of a config file (-c), or in the PP_SECRET "
            "environment variable (or use --certfile, --keyfile and --cafile).\n")
        return 2
    if cfg["secret_on_cmdline"]:
        sys.stderr.write(
            "ppserver: warning: -s puts the secret on the command line, where every local "
            "user can read it (ps, /proc/PID/cmdline); use --secret-file or PP_SECRET\n")
    logging.basicConfig(level=logging.DEBUG if cfg["debug"] else logging.INFO,
                        format=cfg["format"])
    log = logging.getLogger("pp")
    import pp
    stop = []

    def on_term(signum, frame):
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    # --connect: dial the client (connect-back), no listening socket
    where = ({"_connect": cfg["connect"]} if cfg["connect"] else
             {"_listen": (cfg["interface"], cfg["port"]), "_announce": cfg["autodiscovery"]})
    try:
        server = pp.Server(ncpus=cfg["workers"], secret=cfg["secret"], restart=cfg["restart"],
                           proto=cfg["proto"], _liveness=cfg["socket_timeout"],
                           _broadcast=cfg["broadcast"], _discover_port=cfg["discover_port"],
                           certfile=cfg["certfile"], keyfile=cfg["keyfile"],
                           cafile=cfg["cafile"], status_port=cfg["status_port"],
                           status_host=cfg["status_host"], **where)
    except (OSError, ValueError, TypeError) as e:
        sys.stderr.write("ppserver: %s\n" % e)
        return 1
    signal.signal(signal.SIGUSR1, lambda s, f: (server.print_stats(), sys.stdout.flush()))
    port = server._server_info()[0]
    if cfg["pid_file"]:
        with open(cfg["pid_file"], "w") as f:
            f.write("%d\n" % os.getpid())
    tls = "TLS, %s" % ("certificates" if cfg["certfile"] else "shared secret")
    if cfg["connect"]:
        log.info("ppserver %s dialing %s:%d with %d workers (%s)", pp.__version__,
                 cfg["connect"][0], cfg["connect"][1], server.get_ncpus(), tls)
    else:
        log.info("ppserver %s listening on %s:%d with %d workers%s (%s)", pp.__version__,
                 cfg["interface"], port, server.get_ncpus(),
                 ", announcing itself" if cfg["autodiscovery"] else "", tls)
    if server.status_url:
        log.info("status page on %s", server.status_url)
    sys.stdout.flush()
    try:
        while not stop:
            time.sleep(0.2)
            if cfg["timeout"] is not None:
                _, nclients, idle = server._server_info()
                if nclients == 0 and idle >= cfg["timeout"]:
                    log.info("no client for %.0f s: exiting", idle)
                    break
    finally:
        server.destroy()
        if cfg["pid_file"]:
            try:
                os.unlink(cfg["pid_file"])
            except OSError:
                pass
        log.info("ppserver stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
