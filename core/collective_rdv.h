/* collective_rdv.h: the ranks of an srun without PMI meet at MASTER_ADDR:MASTER_PORT
 * (docs/multi-gpu.md, "Slurm without PMIx").
 *
 * Under `srun --mpi=pmix` MPI learns its world from Slurm. A Slurm without PMIx starts the tasks
 * with SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and nothing more, and each process would start
 * MPI as a world of one. Then the ranks join through MPI's own dynamic-process calls
 * (MPI_Open_port, MPI_Comm_accept / MPI_Comm_connect, MPI_Intercomm_merge), which Open MPI serves
 * across separately started processes through its name server, ompi-server: rank 0 starts one,
 * listens on MASTER_PORT (torchrun's variables) and hands every rank that connects the server's
 * URI and the port name; the others connect to MASTER_ADDR:MASTER_PORT, retrying until rank 0 is
 * up. The TCP exchange carries those two strings and nothing else: every collective afterwards
 * is MPI's. QLORA_RENDEZVOUS_TIMEOUT (seconds, default 300) bounds the wait; QLORA_OMPI_SERVER
 * names the ompi-server program when it is not on PATH. */
#ifndef CORE_COLLECTIVE_RDV_H
#define CORE_COLLECTIVE_RDV_H

/* Start MPI and build the communicator of `world` ranks in rank order; *comm_out (an MPI_Comm)
 * receives it. Returns 0 or an ERR_* code with a message naming what to fix. Every rank calls it
 * once, before any other MPI call. */
int coll_rendezvous_join(int rank, int world, void *comm_out);
/* After MPI_Finalize: rank 0 stops its ompi-server and removes the files it wrote. */
void coll_rendezvous_end(void);

#endif
