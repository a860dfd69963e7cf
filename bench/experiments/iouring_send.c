/* io_uring against a send() loop for fan-out: one small write to each of N sockets per turn.
 *
 * Standalone experiment for issue 13 (item 2), not part of fastws. Built and driven by
 * iouring_send.py next to this file, which also runs the reader process:
 *
 *     python bench/experiments/iouring_send.py
 *
 * Plain C with raw syscalls and <linux/io_uring.h> (linux-libc-dev); no liburing.
 *
 * Usage: iouring_send PORT CTRL_PORT N TURNS1 TURNS16 REPS MODES
 *   Connects N TCP sockets to 127.0.0.1:PORT (the reader's data port) and one control socket to
 *   CTRL_PORT. Sockets are non-blocking with TCP_NODELAY, like a fastws server's. Then for REPS
 *   repetitions, for each burst K in {1, 16} and each mode in MODES (comma separated; the order is
 *   rotated per repetition), runs TURNS_K turns. In a turn every socket gets K 102-byte frames in one
 *   buffer (K=16 is the coalesced write fastws makes at bursts). Modes:
 *     send        a loop of send(fd, buf, len, MSG_DONTWAIT), today's path
 *     uring       one IORING_OP_SEND SQE per socket, one io_uring_enter(submit=N, wait=N)
 *     uring_dt    the same with IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
 *     uring_dtfix uring_dt plus registered files (IOSQE_FIXED_FILE): io_uring's best case here
 *     sqpoll      IORING_SETUP_SQPOLL (kernel thread on the sender's CPU, idle 10 ms); the sender
 *                 only waits for the N completions (one io_uring_enter(GETEVENTS) per turn)
 *   A mode whose ring cannot be set up is reported ("skip") and left out.
 *   Unsent bytes (EAGAIN or a short write) stay owed to that socket and go out first in its next
 *   write, in order, in every mode alike; the run ends when every socket has everything.
 *   CPU: getrusage(RUSAGE_SELF) before the first turn and 30 ms after the last completion (so an
 *   SQPOLL thread's idle spin is counted; it belongs to the thread group); also the busy jiffies of
 *   cpu0 (/proc/stat, includes other processes) and the CPU time of ksoftirqd on the sender's CPU
 *   (/proc/PID/schedstat; softirq work deferred there is not in the sender's rusage), how often
 *   ksoftirqd went to sleep (voluntary switches) and the NET_RX softirqs raised on that CPU.
 *   After each run the sender tells the reader the expected per-socket total over the control
 *   socket and waits for "OK" (the reader checks every socket's count and every byte's content).
 * Output: one line per run, "run mode=.. k=.. rep=.. deliveries=.. user_us=.. sys_us=.. wall_us=..
 *   cpu0_jiffies=.. ksoftirqd_us=.. ksoftirqd_wakeups=.. net_rx=.. eagain=.. short=.. enters=..", and "skip mode=.. errno=..".
 * Bounded: alarm(600) ends the process if anything hangs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#define FRAME 102
#define MAXK 16
#define PATTERN_FRAMES 2048 /* owed bytes are sent from a periodic pattern of frames */
#define MAXWRITE (PATTERN_FRAMES - 1) * FRAME

static unsigned char pattern[PATTERN_FRAMES * FRAME];
static int nsock;
static int *fds;
static uint64_t *target, *sent; /* per socket: bytes owed in total, bytes the kernel accepted */
static uint64_t n_eagain, n_short, n_enters;

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* ---- raw io_uring ---- */
struct ring {
    int fd;
    unsigned setup_flags;
    int fixed;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_flags, *sq_array, sq_entries;
    struct io_uring_sqe *sqes;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_cqe *cqes;
};

static int sys_setup(unsigned entries, struct io_uring_params *p) {
    return (int)syscall(__NR_io_uring_setup, entries, p);
}
static int sys_enter(int fd, unsigned submit, unsigned complete, unsigned flags) {
    return (int)syscall(__NR_io_uring_enter, fd, submit, complete, flags, NULL, 0);
}
static int sys_register(int fd, unsigned op, void *arg, unsigned nr) {
    return (int)syscall(__NR_io_uring_register, fd, op, arg, nr);
}

/* returns 0 or -errno */
static int ring_init(struct ring *r, unsigned entries, unsigned flags, int fixed, int sq_cpu) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    memset(r, 0, sizeof *r);
    p.flags = flags;
    if (flags & IORING_SETUP_SQPOLL) {
        p.sq_thread_idle = 10; /* ms */
        if (sq_cpu >= 0) {
            p.flags |= IORING_SETUP_SQ_AFF;
            p.sq_thread_cpu = (unsigned)sq_cpu;
        }
    }
    int fd = sys_setup(entries, &p);
    if (fd < 0) return -errno;
    size_t sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single && cq_sz > sq_sz) sq_sz = cq_sz;
    unsigned char *sq = mmap(0, sq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                             IORING_OFF_SQ_RING);
    if (sq == MAP_FAILED) return -errno;
    unsigned char *cq = sq;
    if (!single) {
        cq = mmap(0, cq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
        if (cq == MAP_FAILED) return -errno;
    }
    r->sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) return -errno;
    r->fd = fd;
    r->setup_flags = flags;
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_flags = (unsigned *)(sq + p.sq_off.flags);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->sq_entries = p.sq_entries;
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    for (unsigned i = 0; i < p.sq_entries; i++) r->sq_array[i] = i; /* identity, set once */
    if (fixed) {
        if (sys_register(fd, IORING_REGISTER_FILES, fds, (unsigned)nsock) < 0) return -errno;
        r->fixed = 1;
    }
    return 0;
}

/* account the result of one write of `want` bytes to socket i */
static inline void account(int i, long res, size_t want) {
    if (res < 0) {
        if (res == -EAGAIN || res == -EWOULDBLOCK) {
            n_eagain++;
            return;
        }
        errno = (int)-res;
        die("send");
    }
    sent[i] += (uint64_t)res;
    if ((size_t)res < want) n_short++;
}

static inline size_t owed(int i, const unsigned char **ptr) {
    uint64_t o = target[i] - sent[i];
    *ptr = pattern + sent[i] % FRAME;
    return o > MAXWRITE ? MAXWRITE : (size_t)o;
}

/* one pass over every socket that is owed bytes; returns how many were owed */
static int pass_send(void) {
    int owing = 0;
    for (int i = 0; i < nsock; i++) {
        const unsigned char *p;
        size_t len = owed(i, &p);
        if (!len) continue;
        owing++;
        ssize_t res = send(fds[i], p, len, MSG_DONTWAIT);
        account(i, res < 0 ? -errno : res, len);
    }
    return owing;
}

static int pass_uring(struct ring *r) {
    int owing = 0;
    int i = 0;
    while (i < nsock) {
        unsigned tail = *r->sq_tail, queued = 0;
        for (; i < nsock && queued < r->sq_entries; i++) {
            const unsigned char *p;
            size_t len = owed(i, &p);
            if (!len) continue;
            struct io_uring_sqe *sqe = &r->sqes[tail & *r->sq_mask];
            memset(sqe, 0, sizeof *sqe);
            sqe->opcode = IORING_OP_SEND;
            sqe->fd = r->fixed ? i : fds[i];
            sqe->flags = r->fixed ? IOSQE_FIXED_FILE : 0;
            sqe->addr = (uint64_t)(uintptr_t)p;
            sqe->len = (unsigned)len;
            sqe->msg_flags = MSG_DONTWAIT; /* EAGAIN comes back as -EAGAIN, as from send() */
            sqe->user_data = (uint64_t)i | ((uint64_t)len << 32);
            tail++;
            queued++;
        }
        if (!queued) break;
        owing += (int)queued;
        __atomic_store_n(r->sq_tail, tail, __ATOMIC_RELEASE);
        unsigned got = 0;
        if (r->setup_flags & IORING_SETUP_SQPOLL) {
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            if (__atomic_load_n(r->sq_flags, __ATOMIC_RELAXED) & IORING_SQ_NEED_WAKEUP) {
                if (sys_enter(r->fd, 0, 0, IORING_ENTER_SQ_WAKEUP) < 0) die("io_uring_enter wakeup");
                n_enters++;
            }
        } else {
            int ret = sys_enter(r->fd, queued, queued, IORING_ENTER_GETEVENTS);
            n_enters++;
            if (ret < 0) die("io_uring_enter");
            if ((unsigned)ret != queued) {
                fprintf(stderr, "submitted %d of %u\n", ret, queued);
                exit(2);
            }
        }
        while (got < queued) {
            unsigned head = *r->cq_head;
            unsigned ctail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
            for (; head != ctail; head++) {
                struct io_uring_cqe *c = &r->cqes[head & *r->cq_mask];
                account((int)(c->user_data & 0xffffffffu), c->res, (size_t)(c->user_data >> 32));
                got++;
            }
            __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
            if (got < queued) {
                if (sys_enter(r->fd, 0, queued - got, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR)
                    die("io_uring_enter wait");
                n_enters++;
            }
        }
    }
    return owing;
}

/* ---- measurement ---- */
static double tv_us(struct timeval t) { return t.tv_sec * 1e6 + t.tv_usec; }
static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}
static long long cpu0_busy(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    char line[512];
    long long v[10] = {0};
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "cpu0 ", 5)) {
            sscanf(line + 5, "%lld %lld %lld %lld %lld %lld %lld %lld", &v[0], &v[1], &v[2], &v[3], &v[4],
                   &v[5], &v[6], &v[7]);
            break;
        }
    }
    fclose(f);
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]; /* user nice system irq softirq steal */
}

/* CPU time (ns, exact: /proc/PID/schedstat) of ksoftirqd on our CPU: softirq work the kernel
 * defers to it is not in our rusage, and io_uring batches do defer some (measured) */
static char ksoft_path[64];
static long long ksoft_ns(void) {
    if (!ksoft_path[0]) return 0;
    FILE *f = fopen(ksoft_path, "r");
    if (!f) return 0;
    long long ns = 0;
    if (fscanf(f, "%lld", &ns) != 1) ns = 0;
    fclose(f);
    return ns;
}
/* ksoftirqd's voluntary context switches, i.e. how often it ran out of work after being woken */
static long long ksoft_switches(void) {
    if (!ksoft_path[0]) return 0;
    char path[64];
    snprintf(path, sizeof path, "%.*s/status", (int)(strrchr(ksoft_path, '/') - ksoft_path), ksoft_path);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[256];
    long long v = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "voluntary_ctxt_switches: %lld", &v) == 1) break;
    fclose(f);
    return v;
}
/* NET_RX softirqs raised on CPU `cpu` so far (/proc/softirqs) */
static long long net_rx(int cpu) {
    FILE *f = fopen("/proc/softirqs", "r");
    if (!f) return 0;
    char line[1024];
    long long v = 0;
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, "NET_RX:");
        if (!p) continue;
        p += 7;
        for (int c = 0; c <= cpu; c++) v = strtoll(p, &p, 10);
        break;
    }
    fclose(f);
    return v;
}

static void find_ksoftirqd(int cpu) {
    char want[32], path[64], comm[64];
    snprintf(want, sizeof want, "ksoftirqd/%d\n", cpu);
    for (int pid = 1; pid < 1000; pid++) { /* kernel threads have small pids */
        snprintf(path, sizeof path, "/proc/%d/comm", pid);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        int hit = fgets(comm, sizeof comm, f) && !strcmp(comm, want);
        fclose(f);
        if (hit) {
            snprintf(ksoft_path, sizeof ksoft_path, "/proc/%d/schedstat", pid);
            return;
        }
    }
}

static FILE *ctrl_in;
static int ctrl_fd;

static void sync_reader(void) {
    char msg[64];
    int n = snprintf(msg, sizeof msg, "EXPECT %llu\n", (unsigned long long)target[0]);
    if (write(ctrl_fd, msg, (size_t)n) != n) die("ctrl write");
    char line[256];
    if (!fgets(line, sizeof line, ctrl_in)) die("ctrl read");
    if (strncmp(line, "OK", 2)) {
        fprintf(stderr, "reader: %s", line);
        exit(3);
    }
}

static int connect_to(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    return s;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s PORT CTRL_PORT N TURNS1 TURNS16 REPS MODES\n", argv[0]);
        return 1;
    }
    alarm(600);
    int port = atoi(argv[1]), cport = atoi(argv[2]);
    nsock = atoi(argv[3]);
    int turns[2] = {atoi(argv[4]), atoi(argv[5])}, ks[2] = {1, MAXK};
    int reps = atoi(argv[6]);
    if (nsock < 1 || nsock > 100000 || turns[0] < 1 || turns[1] < 1 || reps < 1) {
        fprintf(stderr, "bad arguments\n");
        return 1;
    }
    const char *names[5] = {"send", "uring", "uring_dt", "uring_dtfix", "sqpoll"};
    int use[5] = {0};
    char *modes = strdup(argv[7]);
    for (char *tok = strtok(modes, ","); tok; tok = strtok(NULL, ",")) {
        int found = 0;
        for (int m = 0; m < 5; m++)
            if (!strcmp(tok, names[m])) use[m] = found = 1;
        if (!found) {
            fprintf(stderr, "unknown mode %s\n", tok);
            return 1;
        }
    }
    for (int f = 0; f < PATTERN_FRAMES; f++) {
        unsigned char *fr = pattern + f * FRAME;
        fr[0] = 0x81; /* FIN + text */
        fr[1] = 100;
        memset(fr + 2, 'x', 100);
        memcpy(fr + 2, "{\"pad\":\"", 8);
        fr[100] = '"';
        fr[101] = '}';
    }

    ctrl_fd = connect_to(cport);
    ctrl_in = fdopen(dup(ctrl_fd), "r");
    fds = calloc((size_t)nsock, sizeof *fds);
    target = calloc((size_t)nsock, sizeof *target);
    sent = calloc((size_t)nsock, sizeof *sent);
    int one = 1;
    for (int i = 0; i < nsock; i++) {
        fds[i] = connect_to(port);
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK) < 0) die("O_NONBLOCK");
    }
    sync_reader(); /* all connected and accepted */

    int cpu = sched_getcpu();
    find_ksoftirqd(cpu);
    struct ring rings[5];
    int ok[5] = {0};
    unsigned setup[5] = {0, 0, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                         IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_SQPOLL};
    int fixed[5] = {0, 0, 0, 1, 0};
    for (int m = 0; m < 5; m++) {
        if (!use[m]) continue;
        if (m == 0) {
            ok[m] = 1;
            continue;
        }
        unsigned entries = 1;
        while (entries < (unsigned)nsock && entries < 4096) entries <<= 1;
        int rc = ring_init(&rings[m], entries, setup[m], fixed[m], cpu);
        if (rc < 0) {
            printf("skip mode=%s errno=%d (%s)\n", names[m], -rc, strerror(-rc));
            continue;
        }
        ok[m] = 1;
    }
    printf("setup n=%d cpu=%d ksoftirqd=%s\n", nsock, cpu, ksoft_path[0] ? ksoft_path : "not found");
    fflush(stdout);

    int order[5], norder = 0;
    for (int m = 0; m < 5; m++)
        if (ok[m]) order[norder++] = m;
    for (int rep = 0; rep < reps; rep++) {
        for (int ki = 0; ki < 2; ki++) {
            for (int j = 0; j < norder; j++) {
                int m = order[(j + rep) % norder];
                int k = ks[ki];
                n_eagain = n_short = n_enters = 0;
                usleep(20000);
                struct rusage r0, r1;
                long long j0 = cpu0_busy(), s0 = ksoft_ns(), x0 = ksoft_switches(), r0x = net_rx(cpu);
                getrusage(RUSAGE_SELF, &r0);
                double w0 = now_us();
                for (int t = 0; t < turns[ki]; t++) {
                    for (int i = 0; i < nsock; i++) target[i] += (uint64_t)k * FRAME;
                    if (m == 0) pass_send();
                    else pass_uring(&rings[m]);
                }
                /* whatever the kernel did not take yet (EAGAIN, short writes) */
                double deadline = now_us() + 60e6;
                for (;;) {
                    int owing = 0;
                    for (int i = 0; i < nsock; i++) owing += sent[i] != target[i];
                    if (!owing) break;
                    if (now_us() > deadline) {
                        fprintf(stderr, "could not send everything within 60 s\n");
                        return 4;
                    }
                    usleep(1000);
                    if (m == 0) pass_send();
                    else pass_uring(&rings[m]);
                }
                double w1 = now_us();
                usleep(30000); /* let an SQPOLL thread's idle spin end inside the measurement */
                getrusage(RUSAGE_SELF, &r1);
                long long j1 = cpu0_busy(), s1 = ksoft_ns(), x1 = ksoft_switches(), r1x = net_rx(cpu);
                printf("run mode=%s k=%d rep=%d deliveries=%lld user_us=%.0f sys_us=%.0f wall_us=%.0f "
                       "cpu0_jiffies=%lld ksoftirqd_us=%.0f ksoftirqd_wakeups=%lld net_rx=%lld eagain=%llu short=%llu enters=%llu\n",
                       names[m], k, rep, (long long)turns[ki] * k * nsock,
                       tv_us(r1.ru_utime) - tv_us(r0.ru_utime), tv_us(r1.ru_stime) - tv_us(r0.ru_stime),
                       w1 - w0, j1 - j0, (s1 - s0) / 1e3, x1 - x0, r1x - r0x, (unsigned long long)n_eagain, (unsigned long long)n_short,
                       (unsigned long long)n_enters);
                fflush(stdout);
                sync_reader();
            }
        }
    }
    if (write(ctrl_fd, "END\n", 4) != 4) die("ctrl write");
    return 0;
}
