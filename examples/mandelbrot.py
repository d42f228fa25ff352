#!/usr/bin/env python3
"""Mandelbrot set in chunks with Parallel Python, saved as a PNG.

Shows: splitting a large, CPU-bound workload (a pure-Python
calculate_z over a list of complex points) into contiguous chunks,
submitting one pp job per chunk, gathering the results back in order,
timing the run and printing the job server statistics.  The picture is
written with Pillow: points in the set are black, the others are
coloured by how many iterations they needed to escape.

Source: seed 004 ("Applied Parallel Computing with Python", PyCon 2013,
the ParallelPython Mandelbrot demo), ported to Python 3.

Run:  python examples/mandelbrot.py [--size N] [--maxiter N] [--chunks N]
                                    [--ncpus N] [--output PATH]
      e.g. python examples/mandelbrot.py --size 100 --maxiter 100
"""
import argparse
import math
import sys
import time

import pp

# area of space to investigate (as in the PyCon 2013 demo)
x1, x2, y1, y2 = -2.13, 0.77, -1.3, 1.3


def calculate_z(q, maxiter):
    """Take a list of complex points q and return, for each point, the
    number of iterations of z = z*z + c (z starting at 0) before abs(z)
    exceeded 2.0; maxiter for points that never escaped (in the set)."""
    output = [maxiter] * len(q)
    for i in range(len(q)):
        c = q[i]
        z = 0 + 0j
        for iteration in range(maxiter):
            z = z * z + c
            if abs(z) > 2.0:
                output[i] = iteration
                break
    return output


def make_points(size):
    """size x size complex points covering the area, row by row (top row first)."""
    xs = [x1 + (x2 - x1) * i / size for i in range(size)]
    ys = [y2 - (y2 - y1) * j / size for j in range(size)]
    q = []
    for ycoord in ys:
        for xcoord in xs:
            q.append(complex(xcoord, ycoord))
    return q


def split_chunks(q, nbr_chunks):
    """Split q into nbr_chunks contiguous chunks of (nearly) equal length."""
    nbr_chunks = max(1, min(nbr_chunks, len(q)))
    base, extra = divmod(len(q), nbr_chunks)
    chunks = []
    start = 0
    for k in range(nbr_chunks):
        end = start + base + (1 if k < extra else 0)
        chunks.append(q[start:end])
        start = end
    return chunks


def palette_index(n, maxiter):
    """Map an iteration count to a palette index: 0 (black) for points in
    the set, 1..255 for the others (a logarithmic ramp)."""
    if n >= maxiter:
        return 0
    return 1 + int(254 * math.log(n + 1) / math.log(maxiter + 1))


def save_png(output, size, maxiter, path):
    try:
        from PIL import Image
    except ImportError:
        sys.stderr.write("Pillow is needed to write the picture: pip install pillow\n")
        return False
    # palette: entry 0 black (the set), then dark blue -> white -> orange
    palette = [0, 0, 0]
    for k in range(1, 256):
        t = (k - 1) / 254.0
        if t < 0.5:
            s = t / 0.5
            rgb = (int(20 + 235 * s), int(30 + 225 * s), int(100 + 155 * s))
        else:
            s = (t - 0.5) / 0.5
            rgb = (255, int(255 - 120 * s), int(255 - 255 * s))
        palette.extend(rgb)
    im = Image.new("P", (size, size))
    im.putpalette(palette)
    im.putdata([palette_index(n, maxiter) for n in output])
    im.convert("RGB").save(path, "PNG")
    return True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=500,
                        help="picture is SIZE x SIZE points (default 500)")
    parser.add_argument("--maxiter", type=int, default=1000,
                        help="maximum number of iterations (default 1000)")
    parser.add_argument("--chunks", type=int, default=100,
                        help="number of jobs the work is split into (default 100)")
    parser.add_argument("--ncpus", type=int, default=None,
                        help="number of local workers (default: autodetect)")
    parser.add_argument("--output", default="mandelbrot.png",
                        help="PNG file to write (default mandelbrot.png)")
    opts = parser.parse_args()
    if opts.size < 1 or opts.maxiter < 1 or opts.chunks < 1:
        parser.error("--size, --maxiter and --chunks must be positive")

    q = make_points(opts.size)
    print("Total elements:", len(q))
    chunks = split_chunks(q, opts.chunks)
    print("Split into", len(chunks), "chunks")

    # tuple of all parallel python servers to connect with
    ppservers = ()
    #ppservers = ("localhost",)
    if opts.ncpus is None:
        job_server = pp.Server(ppservers=ppservers)
    else:
        job_server = pp.Server(opts.ncpus, ppservers=ppservers)
    print("Starting pp with", job_server.get_ncpus(), "workers")

    start_time = time.time()
    jobs = []
    for chunk in chunks:
        job = job_server.submit(calculate_z, (chunk, opts.maxiter), (), ())
        jobs.append(job)
    output = []
    for job in jobs:
        output += job()
    end_time = time.time()

    print("Main took", end_time - start_time, "s")
    # print statistics about the run
    job_server.print_stats()
    job_server.destroy()

    print("Total sum of elements (for validation):", sum(output))
    print("Points in the set:", sum(1 for n in output if n >= opts.maxiter))
    if save_png(output, opts.size, opts.maxiter, opts.output):
        print("Wrote", opts.output)
    else:
        sys.exit(1)
