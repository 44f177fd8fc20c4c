/*
 * LD_PRELOAD shim for t/test_watch.py: in nginx's worker processes the
 * resources the module's worker-exit watch may use cannot be had, as
 * under systemd's RestrictAddressFamilies=, in a sandbox, or at the fd
 * limit: socket(AF_INET, SOCK_DGRAM) fails with EMFILE, opening /dev/null
 * with EACCES. A worker is any process but the one that loaded the shim
 * (nginx's master, which forks the workers). Everything else passes.
 */

#define _GNU_SOURCE

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>


static pid_t  master;


__attribute__((constructor)) static void
watch_fail_init(void)
{
    master = getpid();
}


static int
watch_fail_open(const char *path)
{
    if (getpid() != master && path != NULL
        && strcmp(path, "/dev/null") == 0)
    {
        errno = EACCES;
        return 1;
    }

    return 0;
}


int
socket(int domain, int type, int protocol)
{
    static int  (*real)(int, int, int);

    if (getpid() != master && domain == AF_INET
        && (type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) == SOCK_DGRAM)
    {
        errno = EMFILE;
        return -1;
    }

    if (real == NULL) {
        real = (int (*)(int, int, int)) dlsym(RTLD_NEXT, "socket");
    }

    return real(domain, type, protocol);
}


/* open(), open64(), openat(), openat64(): the mode only with O_CREAT */

#define WATCH_FAIL_MODE(flags, mode)                                         \
    do {                                                                     \
        va_list  ap;                                                         \
        mode = 0;                                                            \
        if ((flags) & (O_CREAT | O_TMPFILE)) {                               \
            va_start(ap, flags);                                             \
            mode = va_arg(ap, mode_t);                                       \
            va_end(ap);                                                      \
        }                                                                    \
    } while (0)


#define WATCH_FAIL_OPENAT(name)                                              \
int                                                                          \
name(int dirfd, const char *path, int flags, ...)                            \
{                                                                            \
    static int  (*real)(int, const char *, int, ...);                        \
    mode_t        mode;                                                      \
                                                                             \
    WATCH_FAIL_MODE(flags, mode);                                            \
                                                                             \
    if (watch_fail_open(path)) {                                             \
        return -1;                                                           \
    }                                                                        \
                                                                             \
    if (real == NULL) {                                                      \
        real = (int (*)(int, const char *, int, ...))                        \
                   dlsym(RTLD_NEXT, #name);                                  \
    }                                                                        \
                                                                             \
    return real(dirfd, path, flags, mode);                                   \
}

/* open(path) is openat(AT_FDCWD, path): one check for the four */

#define WATCH_FAIL_OPEN(name, at)                                            \
int                                                                          \
name(const char *path, int flags, ...)                                       \
{                                                                            \
    mode_t  mode;                                                            \
                                                                             \
    WATCH_FAIL_MODE(flags, mode);                                            \
                                                                             \
    return at(AT_FDCWD, path, flags, mode);                                  \
}

WATCH_FAIL_OPENAT(openat)
WATCH_FAIL_OPENAT(openat64)
WATCH_FAIL_OPEN(open, openat)
WATCH_FAIL_OPEN(open64, openat64)
