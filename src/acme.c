/* acme — see acme.h. The thread's story: settings and jobs under `lock`;
 * run() picks the job due first and sleeps on `wake` until then;
 * run_job() has acme_order.c get it and sets when it is next due. */
#include <curl/curl.h>
#include <errno.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "acme.h"
#include "acme_crypto.h"
#include "acme_order.h"
#include "log.h"
#include "metrics.h"
#include "tls.h"

/* Longest wait between retries after failures, and between looks at the
 * schedule (a clock step is noticed within it). */
#define BACKOFF_MAX (6 * 3600)
/* The least wait after a success whose certificate is due already. */
#define AGAIN_MIN 3600
#define SLEEP_MAX 3600

struct acme {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_bool stop;
    bool changed;   /* acme_update() since the thread last looked */
    unsigned epoch; /* +1 at every acme_update() and acme_renew_all(): the
                     * result of a job begun before is not written back over
                     * the schedule they set */
    struct acme_settings settings;
    struct acme_job *jobs;
    size_t njobs;
    acme_installed_fn *installed;
    void *arg;
    struct acme_client *client; /* the thread's own: the CA conversation */
};

/* ---- settings and jobs ------------------------------------------------------ */

static void settings_free(struct acme_settings *s)
{
    free(s->directory);
    free(s->contact);
    free(s->state_dir);
    free(s->ca);
    memset(s, 0, sizeof *s);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void jobs_free(struct acme_job *jobs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < jobs[i].nnames; j++)
            free(jobs[i].names[j]);
    free(jobs);
}

bool acme_wanted(const struct config *config)
{
    for (size_t i = 0; i < config->ncertificates; i++)
        if (config->certificates[i].acme)
            return true;
    return false;
}

/* Jobs for the same certificate: the same name and the same names. */
static bool same_job(const struct acme_job *x, const struct acme_job *y)
{
    bool same = strcmp(x->name, y->name) == 0 && x->nnames == y->nnames;
    for (size_t m = 0; same && m < x->nnames; m++)
        same = strcmp(x->names[m], y->names[m]) == 0;
    return same;
}

/* The config's ACME certificates as jobs; a job of `old` with the same name
 * and names keeps its schedule. -1 when out of memory. */
static int make_jobs(const struct config *config, const struct acme_job *old, size_t nold,
                     struct acme_job **out, size_t *nout)
{
    struct acme_job *jobs = calloc(config->ncertificates ? config->ncertificates : 1, sizeof *jobs);
    size_t n = 0;
    if (!jobs)
        return -1;
    for (size_t i = 0; i < config->ncertificates; i++) {
        const struct cfg_certificate *c = &config->certificates[i];
        if (!c->acme)
            continue;
        struct acme_job *j = &jobs[n++];
        snprintf(j->name, sizeof j->name, "%s", c->name);
        j->challenge = c->challenge;
        for (size_t k = 0; k < c->nnames; k++) {
            if (!(j->names[k] = strdup(c->names[k]))) {
                jobs_free(jobs, n);
                return -1;
            }
            j->nnames++;
        }
        for (size_t k = 0; k < nold; k++) {
            if (same_job(&old[k], j)) {
                j->next = old[k].next;
                j->failures = old[k].failures;
            }
        }
    }
    *out = jobs;
    *nout = n;
    return 0;
}

static int copy_settings(const struct config *config, struct acme_settings *s)
{
    const struct cfg_acme *a = &config->acme;
    s->directory = dup_or_null(a->directory);
    s->contact = dup_or_null(a->contact);
    s->state_dir = dup_or_null(a->state_dir);
    s->ca = dup_or_null(a->ca);
    s->retry_interval = a->retry_interval ? a->retry_interval : 60;
    if (!s->directory || !s->state_dir || (a->contact && !s->contact) || (a->ca && !s->ca)) {
        settings_free(s);
        return -1;
    }
    return 0;
}

/* ---- the thread's sleeping ---------------------------------------------- */

/* Sleeps `seconds` or until stopped. Returns false when stopping. */
static bool pause_for(void *arg, unsigned seconds)
{
    struct acme *a = arg;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += seconds;
    pthread_mutex_lock(&a->lock);
    while (!atomic_load(&a->stop) &&
           pthread_cond_timedwait(&a->wake, &a->lock, &until) != ETIMEDOUT) {
    }
    pthread_mutex_unlock(&a->lock);
    return !atomic_load(&a->stop);
}

/* ---- the schedule ----------------------------------------------------------- */

/* When the certificate in `path` is due: two thirds into its lifetime;
 * now when there is none, or it does not load (then it is set aside), or
 * it covers other names. */
static time_t due_of_leaf(X509 *leaf)
{
    time_t nb, na;
    if (acme_cert_times(leaf, &nb, &na) != 0 || na <= nb)
        return time(NULL);
    return nb + (na - nb) / 3 * 2;
}

/* An encrypted key is refused, never prompted for on a terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *arg)
{
    (void)buf, (void)size, (void)rwflag, (void)arg;
    return -1;
}

static time_t due_from_file(const struct acme_settings *s, const struct acme_job *job)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s.pem", s->state_dir, job->name);
    FILE *fp = fopen(path, "r");
    if (!fp) {
        if (errno != ENOENT)
            log_warn("acme: certificate %s: cannot read %s: %s", job->name, path, strerror(errno));
        return time(NULL);
    }
    X509 *leaf = PEM_read_X509(fp, NULL, no_passphrase, NULL);
    rewind(fp);
    EVP_PKEY *key = PEM_read_PrivateKey(fp, NULL, no_passphrase, NULL);
    fclose(fp);
    time_t due = time(NULL);
    if (!leaf || !key || X509_check_private_key(leaf, key) != 1) {
        char aside[4500];
        snprintf(aside, sizeof aside, "%s.corrupt-%lld", path, (long long)time(NULL));
        bool kept = rename(path, aside) == 0;
        log_warn("acme: certificate %s: %s is not a certificate with its key; %s%s, getting a "
                 "new one",
                 job->name, path, kept ? "kept as " : "", kept ? aside : "left as is");
    } else if (!acme_cert_covers(leaf, (const char *const *)job->names, job->nnames)) {
        log_info("acme: certificate %s: %s is for other names; getting one for the names "
                 "configured",
                 job->name, path);
    } else {
        due = due_of_leaf(leaf);
        time_t nb, na;
        if (acme_cert_times(leaf, &nb, &na) == 0)
            metrics_certificate(job->name, -1, (int64_t)na);
    }
    X509_free(leaf);
    EVP_PKEY_free(key);
    return due;
}

/* Seconds to wait after `failures` failures in a row: retry_interval,
 * doubling, at most BACKOFF_MAX, give or take 10%. */
static unsigned backoff(unsigned retry_interval, unsigned failures)
{
    double wait = retry_interval;
    for (unsigned i = 1; i < failures && wait < BACKOFF_MAX; i++)
        wait *= 2;
    if (wait > BACKOFF_MAX)
        wait = BACKOFF_MAX;
    unsigned char r = 0;
    if (RAND_bytes(&r, 1) != 1)
        r = 128;
    wait *= 0.9 + 0.2 * (r / 255.0);
    return wait < 1 ? 1 : (unsigned)wait;
}

static void format_time(time_t t, char *out, size_t outlen)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Gets one due certificate; logs and counts the outcome and sets when the
 * job is next due. Called without the lock, with copies. */
static void run_job(struct acme *a, const struct acme_settings *s, struct acme_job *job)
{
    char err[1024] = "";
    X509 *leaf = NULL;
    log_info("acme: certificate %s: ordering %s%s from %s", job->name, job->names[0],
             job->nnames > 1 ? " and more" : "", s->directory);
    if (acme_client_order(a->client, s, job, &leaf, err, sizeof err) == 0) {
        time_t nb = 0, na = 0, now = time(NULL);
        acme_cert_times(leaf, &nb, &na);
        job->next = due_of_leaf(leaf);
        /* Due already (a clock ahead, a lifetime too short to renew in):
         * not again at once, which would order in a loop. */
        if (job->next <= now)
            job->next = now + (s->retry_interval > AGAIN_MIN ? s->retry_interval : AGAIN_MIN);
        job->failures = 0;
        X509_free(leaf);
        char until[32], renew[32];
        format_time(na, until, sizeof until);
        format_time(job->next, renew, sizeof renew);
        log_info("acme: certificate %s: installed, valid until %s; renewal due %s", job->name,
                 until, renew);
        metrics_certificate(job->name, 1, (int64_t)na);
        a->installed(a->arg);
        return;
    }
    if (atomic_load(&a->stop))
        return;
    job->failures++;
    unsigned wait = backoff(s->retry_interval, job->failures);
    unsigned ca_wait = acme_client_retry_after(a->client); /* rate limited */
    if (ca_wait > wait)
        wait = ca_wait < BACKOFF_MAX ? ca_wait : BACKOFF_MAX;
    job->next = time(NULL) + wait;
    log_warn("acme: certificate %s: %s; retrying in %u s (failure %u in a row)", job->name,
             err[0] ? err : "failed", wait, job->failures);
    metrics_certificate(job->name, 0, 0);
}

static int copy_job(const struct acme_job *from, struct acme_job *to)
{
    *to = *from;
    for (size_t i = 0; i < from->nnames; i++) {
        if (!(to->names[i] = strdup(from->names[i]))) {
            while (i > 0)
                free(to->names[--i]);
            return -1;
        }
    }
    return 0;
}

static void *run(void *arg)
{
    struct acme *a = arg;
    pthread_mutex_lock(&a->lock);
    while (!atomic_load(&a->stop)) {
        a->changed = false;
        time_t now = time(NULL);
        /* Jobs not looked at yet learn their due time from the disk. */
        for (size_t i = 0; i < a->njobs; i++)
            if (a->jobs[i].next == 0)
                a->jobs[i].next = due_from_file(&a->settings, &a->jobs[i]);
        struct acme_job *due = NULL;
        for (size_t i = 0; i < a->njobs; i++)
            if (!due || a->jobs[i].next < due->next)
                due = &a->jobs[i];
        if (due && due->next <= now) {
            struct acme_settings s = {0};
            struct acme_job job;
            bool copied = false;
            if ((s.directory = strdup(a->settings.directory)) &&
                (s.state_dir = strdup(a->settings.state_dir)) &&
                (!a->settings.contact || (s.contact = strdup(a->settings.contact))) &&
                (!a->settings.ca || (s.ca = strdup(a->settings.ca)))) {
                s.retry_interval = a->settings.retry_interval;
                copied = copy_job(due, &job) == 0;
            }
            unsigned epoch = a->epoch;
            pthread_mutex_unlock(&a->lock);
            if (copied)
                run_job(a, &s, &job);
            else
                pause_for(a, 1);
            pthread_mutex_lock(&a->lock);
            for (size_t i = 0; copied && a->epoch == epoch && i < a->njobs; i++) {
                if (same_job(&a->jobs[i], &job)) {
                    a->jobs[i].next = job.next;
                    a->jobs[i].failures = job.failures;
                }
            }
            if (copied)
                for (size_t i = 0; i < job.nnames; i++)
                    free(job.names[i]);
            settings_free(&s);
            continue;
        }
        long wait = due ? (long)(due->next - now) : SLEEP_MAX;
        if (wait > SLEEP_MAX)
            wait = SLEEP_MAX;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += wait;
        while (!atomic_load(&a->stop) && !a->changed &&
               pthread_cond_timedwait(&a->wake, &a->lock, &until) != ETIMEDOUT) {
        }
    }
    pthread_mutex_unlock(&a->lock);
    return NULL;
}

/* ---- start, update, stop ------------------------------------------------- */

/* Creates the state directory (0700) or checks the one there. */
static int make_state_dir(const char *dir)
{
    struct stat st;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        log_error("acme: cannot create the state directory %s: %s (create it, owned by the "
                  "user sallyport runs as, mode 0700)",
                  dir, strerror(errno));
        return -1;
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        log_error("acme: state_dir %s is not a directory", dir);
        return -1;
    }
    if (st.st_mode & 077)
        log_warn("acme: state directory %s is open to others (mode %03o); it holds private "
                 "keys: chmod 700 it",
                 dir, (unsigned)(st.st_mode & 0777));
    return 0;
}

/* Frees what acme_start() made, the thread gone (or never started). */
static void destroy(struct acme *a)
{
    acme_client_free(a->client);
    curl_global_cleanup();
    settings_free(&a->settings);
    jobs_free(a->jobs, a->njobs);
    pthread_cond_destroy(&a->wake);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

struct acme *acme_start(const struct config *config, acme_installed_fn *installed, void *arg)
{
    if (make_state_dir(config->acme.state_dir) != 0)
        return NULL;
    struct acme *a = calloc(1, sizeof *a);
    if (!a || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("acme: cannot set up libcurl");
        free(a);
        return NULL;
    }
    a->installed = installed;
    a->arg = arg;
    atomic_init(&a->stop, false);
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->wake, NULL);
    if (copy_settings(config, &a->settings) != 0 ||
        make_jobs(config, NULL, 0, &a->jobs, &a->njobs) != 0 ||
        !(a->client = acme_client_new(&a->stop, pause_for, a))) {
        log_error("acme: out of memory");
        goto fail;
    }
    if (pthread_create(&a->thread, NULL, run, a) != 0) {
        log_error("acme: cannot start its thread");
        goto fail;
    }
    return a;
fail:
    destroy(a);
    return NULL;
}

void acme_update(struct acme *a, const struct config *config)
{
    if (!a)
        return;
    if (strcmp(config->acme.state_dir, a->settings.state_dir) != 0)
        make_state_dir(config->acme.state_dir);
    struct acme_settings s = {0};
    struct acme_job *jobs = NULL;
    size_t n = 0;
    pthread_mutex_lock(&a->lock);
    if (copy_settings(config, &s) == 0 && make_jobs(config, a->jobs, a->njobs, &jobs, &n) == 0) {
        bool other_ca = strcmp(s.directory, a->settings.directory) != 0;
        settings_free(&a->settings);
        a->settings = s;
        jobs_free(a->jobs, a->njobs);
        a->jobs = jobs;
        a->njobs = n;
        for (size_t i = 0; i < n; i++) { /* a reload looks at the files again */
            if (other_ca) {              /* staging to production, say: every certificate anew */
                a->jobs[i].next = time(NULL);
                a->jobs[i].failures = 0;
            } else {
                a->jobs[i].next = 0; /* a failing one is tried again; its backoff goes on */
            }
        }
        a->changed = true;
        a->epoch++;
        pthread_cond_broadcast(&a->wake);
    } else {
        settings_free(&s);
        log_error("acme: out of memory: keeping the earlier certificates' schedule");
    }
    pthread_mutex_unlock(&a->lock);
}

void acme_renew_all(struct acme *a)
{
    if (!a)
        return;
    pthread_mutex_lock(&a->lock);
    time_t now = time(NULL);
    for (size_t i = 0; i < a->njobs; i++)
        a->jobs[i].next = now;
    a->changed = true;
    a->epoch++;
    pthread_cond_broadcast(&a->wake);
    pthread_mutex_unlock(&a->lock);
}

void acme_stop(struct acme *a)
{
    if (!a)
        return;
    pthread_mutex_lock(&a->lock);
    atomic_store(&a->stop, true);
    pthread_cond_broadcast(&a->wake);
    pthread_mutex_unlock(&a->lock);
    pthread_join(a->thread, NULL);
    destroy(a);
}
