/*
 * listen.h - dashkvd's socket path: one daemon per path, nothing but a
 * socket of ours ever removed there, and the socket's mode set as it is
 * made rather than by path afterwards.
 */
#ifndef DMN_LISTEN_H
#define DMN_LISTEN_H

#include <sys/types.h>

/*
 * Take the path: lock PATH.lock (held until *lock_fd is closed: the lock
 * file itself stays), remove a stale socket of a daemon that died, then
 * bind and listen with the socket file made at mode.  Anything else at the
 * path (a regular file, a symbolic link, a directory, a FIFO, a device, a
 * socket a daemon listens on) is refused and left as it is.  Returns the
 * listening socket and sets *lock_fd, or -1 (logged).
 */
int dmn_listen(const char *path, mode_t mode, int *lock_fd);

#endif
