"""The status page's files (pp/_static/), read once per Server that serves
a status page and handed to the engine, which serves them itself: no CDN,
nothing fetched from elsewhere (clusters are often offline)."""
import os

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_cache = None


def assets():
    """((url path, content type, bytes), ...) for every file of pp/_static."""
    global _cache
    if _cache is None:
        d = os.path.join(os.path.dirname(__file__), "_static")
        out = []
        for name in sorted(os.listdir(d)):
            ext = os.path.splitext(name)[1]
            if ext in _TYPES:
                with open(os.path.join(d, name), "rb") as f:
                    out.append(("/" + name, _TYPES[ext], f.read()))
        _cache = tuple(out)
    return _cache
