"""mpi_hello.py - a pp script that runs unchanged on one machine or, under
pp.run, on every rank of an allocation:

    python examples/mpi_hello.py                      # this machine only
    mpirun -n 4 python -m pp.run examples/mpi_hello.py
    srun -N 2 -n 2 python -m pp.run examples/mpi_hello.py

Under pp.run a plain pp.Server() uses this rank's cores and every other
rank as a node; the script itself runs on rank 0 only.
"""
import os
import socket
import time

import pp


def hello(i):
    import os
    import socket
    return i, socket.gethostname(), os.environ.get("SLURMD_NODENAME", "")


if __name__ == "__main__":
    ranks = int(os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)
    server = pp.Server()
    # nodes dial in as the Server starts; give them a moment to arrive
    deadline = time.time() + 10
    while len([n for n in server.get_active_nodes() if n != "local"]) < ranks - 1 \
            and time.time() < deadline:
        time.sleep(0.05)
    jobs = [server.submit(hello, (i,)) for i in range(4 * server.get_ncpus() + 16)]
    where = sorted(set((host, node) for _, host, node in (job() for job in jobs)))
    print("hello from rank 0 on %s, %d ranks" % (socket.gethostname(), ranks))
    print("nodes: %d" % len([n for n in server.get_active_nodes() if n != "local"]))
    print("jobs ran on: %s" % ", ".join("%s%s" % (h, " (%s)" % n if n else "") for h, n in where))
    server.print_stats()
