/*
 * LD_PRELOAD shim for t/test_idle_buffers.py: in nginx's worker processes
 * malloc() of exactly WSHB_MALLOC_FAIL_SIZE bytes fails (ENOMEM) while the
 * file WSHB_MALLOC_FAIL_FILE exists; every other call goes to glibc. The
 * test gives proxy_buffer_size that size, which nothing else allocates,
 * and creates the file when the relay buffers of an idle connection have
 * been released: the next wake-up cannot have them back. A worker is any
 * process but the one that loaded the shim (nginx's master). Not with
 * ASan, whose runtime comes first and owns malloc().
 */

#define _GNU_SOURCE

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


extern void *__libc_malloc(size_t size);


static pid_t   master;
static size_t  fail_size;
static char    fail_file[4096];    /* a copy: nginx's setproctitle */
                                    /* overwrites the environment */


__attribute__((constructor)) static void
malloc_fail_init(void)
{
    const char  *n;

    master = getpid();
    n = getenv("WSHB_MALLOC_FAIL_SIZE");
    fail_size = n != NULL ? (size_t) atol(n) : 0;
    n = getenv("WSHB_MALLOC_FAIL_FILE");

    if (n != NULL && strlen(n) < sizeof(fail_file)) {
        strcpy(fail_file, n);
    }
}


void *
malloc(size_t size)
{
    if (size == fail_size && fail_size != 0 && fail_file[0] != '\0'
        && getpid() != master && access(fail_file, F_OK) == 0)
    {
        errno = ENOMEM;
        return NULL;
    }

    return __libc_malloc(size);
}
