/*
 * LD_PRELOAD shim for t/test_rand.py: in nginx's worker processes the
 * first WSHB_RAND_FAILS calls of RAND_bytes() fail (OpenSSL's entropy
 * source gone, a sandbox without getrandom()), the later ones go on to
 * OpenSSL. A worker is any process but the one that loaded the shim
 * (nginx's master, which forks the workers).
 */

#define _GNU_SOURCE

#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>


static pid_t  master;
static long   fails;


__attribute__((constructor)) static void
rand_fail_init(void)
{
    const char  *n;

    master = getpid();
    n = getenv("WSHB_RAND_FAILS");
    fails = n != NULL ? atol(n) : 0;
}


int
RAND_bytes(unsigned char *buf, int num)
{
    int  (*next)(unsigned char *, int);

    if (getpid() != master && fails > 0) {
        fails--;
        return 0;
    }

    next = (int (*)(unsigned char *, int)) dlsym(RTLD_NEXT, "RAND_bytes");

    return next != NULL ? next(buf, num) : 0;
}
