/*
 * The wall clock of a host whose clock is off (cloud.sh up --skew),
 * preloaded into that host's nova-compute and so into what it runs
 * (qemu-img, the privsep daemon). WALL_CLOCK_OFFSET (such as +10m, -2h,
 * -90s, +1d) is added to every reading of the wall clock; the monotonic
 * clock, file timestamps and waits are left as they are, as on a host
 * whose clock is merely set wrong.
 *
 * Why not libfaketime: it guards its shared state with a semaphore, and a
 * threaded process that forks while another thread holds it leaves the
 * child blocked on it forever, before exec. A skewed nova-compute's image
 * cache pass hung that way in a soak (2026-12-06, reliability guide). Here
 * the offset is read once when the library loads and never changes: no
 * lock, no shared memory, nothing a fork can cut in half.
 *
 * Waits need nothing: Python's timed waits and sleeps, eventlet and QEMU
 * wait on the monotonic clock or for a relative time. The one absolute
 * wall-clock wait the C library offers directly, clock_nanosleep on
 * CLOCK_REALTIME with TIMER_ABSTIME, is given back the machine's deadline.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static time_t offset;

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static int (*real_clock_nanosleep)(clockid_t, int, const struct timespec *,
                                   struct timespec *);

/* "+10m" -> 600; units s, m, h, d (seconds if none). */
static int parse_offset(const char *text, time_t *seconds)
{
    char *end;
    long value;

    if (text[0] != '+' && text[0] != '-')
        return -1;
    errno = 0;
    value = strtol(text, &end, 10);
    if (errno || end == text + 1)
        return -1;
    switch (*end) {
    case 'd': value *= 24;      /* fall through */
    case 'h': value *= 60;      /* fall through */
    case 'm': value *= 60;      /* fall through */
    case 's': end++;            /* fall through */
    case '\0': break;
    default: return -1;
    }
    if (*end)
        return -1;
    *seconds = value;
    return 0;
}

static void resolve(void)
{
    real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    real_clock_nanosleep = dlsym(RTLD_NEXT, "clock_nanosleep");
}

__attribute__((constructor)) static void load(void)
{
    const char *text = getenv("WALL_CLOCK_OFFSET");

    resolve();
    if (text && parse_offset(text, &offset)) {
        /* A typo must not leave a host on the right clock unnoticed. */
        fprintf(stderr, "wall-clock: bad WALL_CLOCK_OFFSET '%s': use a "
                "signed number with s, m, h or d, such as +10m\n", text);
        exit(2);
    }
}

static int is_wall_clock(clockid_t clock_id)
{
    return clock_id == CLOCK_REALTIME || clock_id == CLOCK_REALTIME_COARSE ||
           clock_id == CLOCK_TAI;
}

int clock_gettime(clockid_t clock_id, struct timespec *now)
{
    int rc;

    if (!real_clock_gettime)    /* called by a constructor that ran first */
        resolve();
    rc = real_clock_gettime(clock_id, now);
    if (rc == 0 && is_wall_clock(clock_id))
        now->tv_sec += offset;
    return rc;
}

/* As the C library's own: the wall clock, the obsolete zone zeroed. */
int gettimeofday(struct timeval *now, void *zone)
{
    struct timespec ts;

    if (zone)
        memset(zone, 0, sizeof(struct timezone));
    if (clock_gettime(CLOCK_REALTIME, &ts))
        return -1;
    now->tv_sec = ts.tv_sec;
    now->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

time_t time(time_t *now)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_REALTIME, &ts))
        return (time_t)-1;
    if (now)
        *now = ts.tv_sec;
    return ts.tv_sec;
}

int timespec_get(struct timespec *now, int base)
{
    if (base != TIME_UTC || clock_gettime(CLOCK_REALTIME, now))
        return 0;
    return base;
}

int clock_nanosleep(clockid_t clock_id, int flags,
                    const struct timespec *request, struct timespec *remain)
{
    struct timespec machine;

    if (!real_clock_nanosleep)
        resolve();
    if ((flags & TIMER_ABSTIME) && is_wall_clock(clock_id)) {
        machine = *request;
        machine.tv_sec -= offset;
        request = &machine;
    }
    return real_clock_nanosleep(clock_id, flags, request, remain);
}
