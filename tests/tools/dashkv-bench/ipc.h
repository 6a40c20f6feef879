/* ipc.h - dashkv-bench ipc: a step through dashkvd vs embedded. */
#ifndef DKV_BENCH_IPC_H
#define DKV_BENCH_IPC_H

/* argv[0] is "ipc"; returns the exit status. */
int cmd_ipc(int argc, char **argv);

#endif
