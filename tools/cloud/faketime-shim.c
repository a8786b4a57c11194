/*
 * Loaded before libfaketime into a nova-compute whose clock cloud.sh
 * shifts (cloud.sh up --skew). That process gets libfaketime with
 * FAKETIME_DONT_FAKE_MONOTONIC=1: only its wall clock is off, as a host's
 * is. libfaketime 0.9.10 (Debian bookworm) then answers EINVAL to an
 * absolute clock_nanosleep on the monotonic clock, which is how Python's
 * time.sleep sleeps: this passes clock_nanosleep straight to the C
 * library. (With the monotonic clock shifted instead, every timed wait of
 * a thread ends hours late or never.)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <time.h>

int clock_nanosleep(clockid_t clock_id, int flags,
                    const struct timespec *request, struct timespec *remain)
{
    static int (*libc)(clockid_t, int, const struct timespec *,
                       struct timespec *);

    if (!libc)
        libc = dlsym(dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD),
                     "clock_nanosleep");
    return libc(clock_id, flags, request, remain);
}
