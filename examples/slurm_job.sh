#!/bin/sh
# slurm_job.sh - a Slurm batch script: one ppc cluster over the whole
# allocation, started by srun; mpi_hello.py runs on rank 0 and every other
# task is a node of it (pp.run). Submit from this folder with:
#
#     sbatch -N 2 -n 2 slurm_job.sh
#
# Give each task several CPUs with --cpus-per-task (its workers follow it).
# PYTHON names the interpreter with ppc installed (default: python3).
#SBATCH --job-name=ppc-hello
#SBATCH --time=00:10:00
set -e
exec srun "${PYTHON:-python3}" -m pp.run mpi_hello.py
