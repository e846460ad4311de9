/* collective_rdv.c: joining the ranks of an srun without PMI (see collective_rdv.h).
 *
 * The exchange at MASTER_ADDR:MASTER_PORT, one TCP connection a rank, text lines:
 *   rank r -> rank 0   "qlora-rdv 1 <world> <r> <token>\n"   token: SLURM_JOB_ID.SLURM_STEP_ID
 *   rank 0 -> rank r   "ok\n<ompi-server URI>\n<MPI port name>\n"   or   "error <why>\n"
 * A connection with another world, token or a rank already seen is answered with an error line
 * (a task of another job that reuses the port, a mistyped MASTER_PORT on one node). */
#define _GNU_SOURCE
#include "core/collective_rdv.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/err.h"

#ifdef QLORA_HAVE_MPI
#include <mpi.h>

static struct {
    pid_t server;       /* rank 0's ompi-server */
    char dir[PATH_MAX]; /* its temporary folder, with the URI file */
} rdv = {.server = -1};

static double timeout_s(void) {
    const char *v = getenv("QLORA_RENDEZVOUS_TIMEOUT");
    double t = v && *v ? atof(v) : 300;
    return t > 0 ? t : 300;
}

static void token_of(char *out, size_t n) {
    const char *job = getenv("SLURM_JOB_ID"), *step = getenv("SLURM_STEP_ID");
    snprintf(out, n, "%s.%s", job && *job ? job : "-", step && *step ? step : "-");
    for (char *p = out; *p; p++)
        if (*p == ' ' || *p == '\n') *p = '_';
}

/* a whole buffer, or an error */
static int send_all(int fd, const char *s, size_t n) {
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read until `lines` newlines have arrived (or the peer closes), by the deadline. */
static int recv_lines(int fd, char *buf, size_t cap, int lines, double deadline) {
    size_t len = 0;
    int seen = 0;
    while (seen < lines) {
        double left = deadline - clock_now_s();
        if (left <= 0) return -1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)(left * 1000) + 1);
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) return -1;
        if (len + 1 >= cap) return -1;
        ssize_t r = recv(fd, buf + len, cap - 1 - len, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        for (ssize_t i = 0; i < r; i++) seen += buf[len + (size_t)i] == '\n';
        len += (size_t)r;
    }
    buf[len] = 0;
    return seen >= lines || (len && !strncmp(buf, "error ", 6)) ? 0 : -1;
}

/* ---- rank 0: the name server and the listening socket ---- */

static char *find_program(const char *name) {
    const char *over = getenv("QLORA_OMPI_SERVER");
    if (over && *over) return strdup(over);
    const char *path = getenv("PATH");
    char *copy = strdup(path ? path : "/usr/bin:/bin"), *save = NULL, *found = NULL;
    for (char *d = strtok_r(copy, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
        char *p;
        if (asprintf(&p, "%s/%s", *d ? d : ".", name) < 0) break;
        if (access(p, X_OK) == 0) found = p;
        else free(p);
    }
    free(copy);
    return found;
}

/* Start ompi-server and read the URI it reports (*uri malloc'd). */
static int server_start(char **uri) {
    char *prog = find_program("ompi-server");
    if (!prog)
        return err_set(ERR_USAGE, "srun started the ranks without PMI, and joining them needs Open MPI's ompi-server, "
                                  "which is not on PATH: install openmpi-bin, set QLORA_OMPI_SERVER, or launch with "
                                  "srun --mpi=pmix");
    const char *tmp = getenv("TMPDIR");
    snprintf(rdv.dir, sizeof rdv.dir, "%s/qlora-rdv-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(rdv.dir)) {
        int rc = err_errno(ERR_STAGE, "cannot make a temporary folder for ompi-server's URI ('%s')", rdv.dir);
        rdv.dir[0] = 0;
        free(prog);
        return rc;
    }
    char file[PATH_MAX + 8];
    snprintf(file, sizeof file, "%s/uri", rdv.dir);
    pid_t pid = fork();
    if (pid < 0) {
        int rc = err_errno(ERR_STAGE, "cannot start '%s'", prog);
        free(prog);
        return rc;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* it ends with rank 0, however rank 0 ends */
        int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0) dup2(nul, STDOUT_FILENO);
        execl(prog, "ompi-server", "--no-daemonize", "-r", file, (char *)NULL);
        _exit(127);
    }
    rdv.server = pid;
    double deadline = clock_now_s() + 30;
    for (;;) {
        char buf[4096] = "";
        FILE *f = fopen(file, "r");
        if (f) {
            size_t n = fread(buf, 1, sizeof buf - 1, f);
            fclose(f);
            buf[n] = 0;
        }
        char *nl = strchr(buf, '\n');
        if (nl) {
            *nl = 0;
            *uri = strdup(buf);
            free(prog);
            return 0;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            rdv.server = -1;
            free(prog);
            return err_set(ERR_STAGE, "'%s' ended before it reported its URI (exit %d)", file,
                           WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
        }
        if (clock_now_s() > deadline) {
            free(prog);
            return err_set(ERR_STAGE, "ompi-server did not report its URI in '%s' within 30 s", file);
        }
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
}

/* the listening socket, or minus the error code */
static int listen_on(const char *port) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res = NULL;
    int gr = getaddrinfo(NULL, port, &hints, &res);
    if (gr) return -err_set(ERR_USAGE, "MASTER_PORT '%s': %s", port, gai_strerror(gr));
    int fd = -1;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) || listen(fd, 64)) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) return -err_errno(ERR_USAGE, "rank 0 cannot listen on MASTER_PORT %s (taken by another program?)", port);
    return fd;
}

/* Rank 0: take one connection from every other rank, then answer each with uri and port. */
static int serve_ranks(int lfd, int world, const char *uri, const char *port_name) {
    int *fds = calloc((size_t)world, sizeof *fds);
    if (!fds) return err_set(ERR_STAGE, "out of memory");
    char token[256];
    token_of(token, sizeof token);
    int have = 0, rc = 0;
    double deadline = clock_now_s() + timeout_s();
    while (have < world - 1 && !rc) {
        double left = deadline - clock_now_s();
        struct pollfd p = {.fd = lfd, .events = POLLIN};
        int pr = left > 0 ? poll(&p, 1, (int)(left * 1000) + 1) : 0;
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) {
            rc = err_set(ERR_STAGE, "rendezvous: %d of %d ranks reached rank 0 at MASTER_PORT within %.0f s "
                                    "(QLORA_RENDEZVOUS_TIMEOUT): check MASTER_ADDR on every node and that each task "
                                    "runs qlora-run", have + 1, world, timeout_s());
            break;
        }
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) continue;
        char hello[512];
        int v = 0, w = -1, r = -1;
        char tok[256] = "";
        if (recv_lines(fd, hello, sizeof hello, 1, clock_now_s() + 10) ||
            sscanf(hello, "qlora-rdv %d %d %d %255s", &v, &w, &r, tok) != 4 || v != 1) {
            close(fd); /* not one of ours */
            continue;
        }
        const char *why = NULL;
        if (w != world) why = "another number of tasks than rank 0";
        else if (strcmp(tok, token)) why = "another Slurm job or step than rank 0";
        else if (r <= 0 || r >= world) why = "a rank outside the world";
        else if (fds[r]) why = "a rank that has already joined";
        if (why) {
            char line[512];
            int n = snprintf(line, sizeof line, "error rank %d (world %d, job %s) is %s (world %d, job %s)\n", r, w,
                             tok, why, world, token);
            send_all(fd, line, (size_t)n);
            close(fd);
            continue;
        }
        fds[r] = fd;
        have++;
    }
    for (int r = 1; r < world; r++) {
        if (!fds[r]) continue;
        char *msg = NULL;
        int n = rc ? asprintf(&msg, "error rank 0 gave up: %s\n", err_msg()) : asprintf(&msg, "ok\n%s\n%s\n", uri, port_name);
        if (n > 0) send_all(fds[r], msg, (size_t)n);
        free(msg);
        close(fds[r]);
    }
    free(fds);
    return rc;
}

/* ---- the other ranks ---- */

static int ask_rank0(int rank, int world, const char *addr, const char *port, char **uri, char **port_name) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    double deadline = clock_now_s() + timeout_s();
    int fd = -1;
    long wait_ms = 50;
    while (fd < 0) {
        int gr = getaddrinfo(addr, port, &hints, &res);
        if (gr == 0) {
            for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
                fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
                if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen)) {
                    close(fd);
                    fd = -1;
                }
            }
            freeaddrinfo(res);
            res = NULL;
        }
        if (fd >= 0) break;
        if (clock_now_s() > deadline)
            return err_set(ERR_STAGE, "rank %d of %d cannot reach rank 0 at MASTER_ADDR %s MASTER_PORT %s within %.0f s "
                                      "(QLORA_RENDEZVOUS_TIMEOUT)%s%s", rank, world, addr, port, timeout_s(),
                           gr ? ": " : "", gr ? gai_strerror(gr) : "");
        struct timespec ts = {wait_ms / 1000, (wait_ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
        if (wait_ms < 1000) wait_ms *= 2;
    }
    char token[256], hello[512], reply[8192];
    token_of(token, sizeof token);
    int n = snprintf(hello, sizeof hello, "qlora-rdv 1 %d %d %s\n", world, rank, token);
    int rc = 0;
    if (send_all(fd, hello, (size_t)n) || recv_lines(fd, reply, sizeof reply, 3, deadline)) {
        rc = err_set(ERR_STAGE, "rank %d: no answer from rank 0 at %s:%s within %.0f s", rank, addr, port, timeout_s());
    } else if (!strncmp(reply, "error ", 6)) {
        char *nl = strchr(reply, '\n');
        if (nl) *nl = 0;
        rc = err_set(ERR_USAGE, "rendezvous at %s:%s refused rank %d: %s", addr, port, rank, reply + 6);
    } else {
        char *a = strchr(reply, '\n'), *b = a ? strchr(a + 1, '\n') : NULL, *c = b ? strchr(b + 1, '\n') : NULL;
        if (strncmp(reply, "ok\n", 3) || !b || !c) {
            rc = err_set(ERR_STAGE, "rank %d: a malformed answer from rank 0 at %s:%s", rank, addr, port);
        } else {
            *b = *c = 0;
            *uri = strdup(a + 1);
            *port_name = strdup(b + 1);
        }
    }
    close(fd);
    return rc;
}

/* MPI_Init as a process of its own (a singleton) that talks to the name server at uri. Open MPI
 * takes a process that sees SLURM_NODELIST for one started by srun with PMI and refuses to start
 * without it; the variables are hidden for the call and put back. */
static int init_singleton(const char *uri) {
    setenv("OMPI_MCA_pmix_server_uri", uri, 1);
    const char *hide[] = {"SLURM_NODELIST", "SLURM_JOB_NODELIST"};
    char *saved[2];
    for (int i = 0; i < 2; i++) {
        const char *v = getenv(hide[i]);
        saved[i] = v ? strdup(v) : NULL;
        unsetenv(hide[i]);
    }
    int flag = 0, ok;
    MPI_Initialized(&flag);
    ok = flag || MPI_Init(NULL, NULL) == MPI_SUCCESS;
    for (int i = 0; i < 2; i++) {
        if (saved[i]) setenv(hide[i], saved[i], 1);
        free(saved[i]);
    }
    return ok ? 0 : err_set(ERR_STAGE, "cannot start MPI (singleton, name server %s)", uri);
}

int coll_rendezvous_join(int rank, int world, void *comm_out) {
    const char *addr = getenv("MASTER_ADDR"), *port = getenv("MASTER_PORT");
    if (!port || !*port || (rank > 0 && (!addr || !*addr)))
        return err_set(ERR_USAGE,
                       "srun started %d tasks without PMI (no PMIX_RANK or PMI_FD): set MASTER_ADDR (the first node "
                       "of the job) and MASTER_PORT (a free port) for every task, or launch with srun --mpi=pmix",
                       world);
    char *uri = NULL, *port_name = NULL;
    int rc = 0, lfd = -1;
    if (rank == 0) {
        lfd = listen_on(port);
        if (lfd < 0) return -lfd;
        if (!(rc = server_start(&uri)) && !(rc = init_singleton(uri))) {
            char name[MPI_MAX_PORT_NAME] = "";
            if (MPI_Open_port(MPI_INFO_NULL, name) != MPI_SUCCESS) rc = err_set(ERR_STAGE, "MPI_Open_port failed");
            else port_name = strdup(name);
        }
        int s = serve_ranks(lfd, world, uri ? uri : "", port_name ? port_name : "");
        if (!rc) rc = s;
        close(lfd);
    } else {
        if (!(rc = ask_rank0(rank, world, addr, port, &uri, &port_name))) rc = init_singleton(uri);
    }
    if (rc) {
        free(uri);
        free(port_name);
        return rc;
    }
    /* the world grows one rank at a time: ranks 0..k-1 accept rank k together and merge, with
     * the newcomer ordered last, so the merged ranks are the Slurm ranks */
    MPI_Comm comm = MPI_COMM_SELF;
    for (int k = 1; k < world && !rc; k++) {
        MPI_Comm inter, intra;
        int r;
        if (rank < k) r = MPI_Comm_accept(port_name, MPI_INFO_NULL, 0, comm, &inter);
        else if (rank == k) r = MPI_Comm_connect(port_name, MPI_INFO_NULL, 0, MPI_COMM_SELF, &inter);
        else continue;
        if (r != MPI_SUCCESS || MPI_Intercomm_merge(inter, rank == k, &intra) != MPI_SUCCESS) {
            rc = err_set(ERR_STAGE, "rank %d: MPI could not join rank %d to the world", rank, k);
            break;
        }
        MPI_Comm_free(&inter);
        if (comm != MPI_COMM_SELF) MPI_Comm_free(&comm);
        comm = intra;
    }
    if (rank == 0) MPI_Close_port(port_name);
    free(uri);
    free(port_name);
    int r = -1, w = 0;
    if (!rc) {
        MPI_Comm_rank(comm, &r);
        MPI_Comm_size(comm, &w);
        if (r != rank || w != world)
            rc = err_set(ERR_STAGE, "internal: the joined world is rank %d of %d, Slurm says %d of %d", r, w, rank, world);
    }
    *(MPI_Comm *)comm_out = comm;
    return rc;
}

void coll_rendezvous_end(void) {
    if (rdv.server > 0) {
        kill(rdv.server, SIGTERM);
        waitpid(rdv.server, NULL, 0);
        rdv.server = -1;
    }
    if (rdv.dir[0]) {
        char file[PATH_MAX + 8];
        snprintf(file, sizeof file, "%s/uri", rdv.dir);
        unlink(file);
        rmdir(rdv.dir);
        rdv.dir[0] = 0;
    }
}

#else

int coll_rendezvous_join(int rank, int world, void *comm_out) {
    (void)rank;
    (void)comm_out;
    return err_set(ERR_USAGE, "srun started %d tasks, but this qlora-run was built without MPI", world);
}

void coll_rendezvous_end(void) {}

#endif
