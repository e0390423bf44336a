/* The Redis anchor of scripts/bench, measured with the official C client (hiredis, from Debian's libhiredis-dev,
 * compiled by scripts/bench): a list task queue.
 *
 *   redisbench worker PORT WORKERS                            BRPOP "tasks", LPUSH the payload to the task's reply list
 *   redisbench bench PORT REQUESTS CONCURRENCY PAYLOAD WARMUP LPUSH a task, BRPOP its reply
 *
 * A task is "REPLY-LIST\n" followed by the payload. `bench` prints one JSON document in the shape of
 * `agentmesh bench --json`. Run redis-server with `appendfsync always` for a durable queue. */
#include <hiredis/hiredis.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int port;

static void fail(const char *what, redisContext *context) {
    fprintf(stderr, "redisbench: %s%s%s\n", what, context ? ": " : "", context ? context->errstr : "");
    exit(1);
}

static redisContext *connect_or_fail(void) {
    redisContext *context = redisConnect("127.0.0.1", port);
    if (context == NULL || context->err) fail("cannot connect", context);
    return context;
}

static double now_microseconds(void) {
    struct timespec time;
    clock_gettime(CLOCK_MONOTONIC, &time);
    return time.tv_sec * 1e6 + time.tv_nsec / 1e3;
}

static void *work(void *unused) {
    (void)unused;
    redisContext *context = connect_or_fail();
    for (;;) {
        redisReply *reply = redisCommand(context, "BRPOP tasks 0");
        if (reply == NULL) fail("BRPOP", context);
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
            const char *task = reply->element[1]->str;
            size_t length = reply->element[1]->len;
            const char *newline = memchr(task, '\n', length);
            if (newline != NULL) {
                size_t key = (size_t)(newline - task);
                redisReply *pushed = redisCommand(context, "LPUSH %b %b", task, key, newline + 1, length - key - 1);
                if (pushed == NULL) fail("LPUSH", context);
                freeReplyObject(pushed);
            }
        }
        freeReplyObject(reply);
    }
    return NULL;
}

struct client {
    redisContext *context;
    char key[64];
    char *task;
    size_t task_length;
    double *samples;
    int count;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int issued, requests;

static void round_trip(struct client *client) {
    redisReply *reply = redisCommand(client->context, "LPUSH tasks %b", client->task, client->task_length);
    if (reply == NULL) fail("LPUSH", client->context);
    freeReplyObject(reply);
    reply = redisCommand(client->context, "BRPOP %s 5", client->key);
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) fail("no reply within 5 s", client->context);
    freeReplyObject(reply);
}

static void *load(void *argument) {
    struct client *client = argument;
    for (;;) {
        pthread_mutex_lock(&lock);
        int mine = issued < requests;
        if (mine) issued++;
        pthread_mutex_unlock(&lock);
        if (!mine) break;
        double sent = now_microseconds();
        round_trip(client);
        client->samples[client->count++] = now_microseconds() - sent;
    }
    return NULL;
}

static int ascending(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Exact percentiles (nearest rank), as `agentmesh bench` computes them. */
static double rank(const double *sorted, int count, double fraction) {
    int index = (int)ceil(fraction * count) - 1;
    return count == 0 ? 0 : sorted[index < 0 ? 0 : index];
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "worker") == 0) {
        port = atoi(argv[2]);
        int workers = atoi(argv[3]);
        for (int index = 0; index < workers; index++) {
            pthread_t thread;
            pthread_create(&thread, NULL, work, NULL);
        }
        printf("ready\n");
        fflush(stdout);
        pthread_exit(NULL);
    }
    if (argc != 7 || strcmp(argv[1], "bench") != 0) {
        fprintf(stderr, "usage: redisbench worker PORT WORKERS | bench PORT REQUESTS CONCURRENCY PAYLOAD WARMUP\n");
        return 2;
    }
    port = atoi(argv[2]);
    requests = atoi(argv[3]);
    int concurrency = atoi(argv[4]), payload = atoi(argv[5]), warmup = atoi(argv[6]);
    struct client *clients = calloc(concurrency, sizeof *clients);
    for (int index = 0; index < concurrency; index++) {
        struct client *client = &clients[index];
        client->context = connect_or_fail();
        snprintf(client->key, sizeof client->key, "reply:%d:%d", (int)getpid(), index);
        client->task_length = strlen(client->key) + 1 + payload;
        client->task = malloc(client->task_length);
        memcpy(client->task, client->key, strlen(client->key));
        client->task[strlen(client->key)] = '\n';
        memset(client->task + strlen(client->key) + 1, 'x', payload);
        client->samples = malloc(sizeof(double) * (requests + 1));
    }
    for (int index = 0; index < warmup; index++) round_trip(&clients[index % concurrency]);
    pthread_t *threads = calloc(concurrency, sizeof *threads);
    double started = now_microseconds();
    for (int index = 0; index < concurrency; index++) pthread_create(&threads[index], NULL, load, &clients[index]);
    for (int index = 0; index < concurrency; index++) pthread_join(threads[index], NULL);
    double seconds = (now_microseconds() - started) / 1e6;
    double *all = malloc(sizeof(double) * (requests + 1));
    int count = 0;
    double sum = 0;
    for (int index = 0; index < concurrency; index++) {
        for (int sample = 0; sample < clients[index].count; sample++) {
            all[count++] = clients[index].samples[sample];
            sum += clients[index].samples[sample];
        }
    }
    qsort(all, count, sizeof *all, ascending);
    printf("{\"requests\":%d,\"failures\":0,\"concurrency\":%d,\"payload_bytes\":%d,\"seconds\":%f,"
           "\"requests_per_second\":%f,\"latency_microseconds\":{\"p50\":%f,\"p90\":%f,\"p99\":%f,\"max\":%f,\"mean\":%f}}\n",
           count, concurrency, payload, seconds, count / seconds, rank(all, count, 0.5), rank(all, count, 0.9),
           rank(all, count, 0.99), count ? all[count - 1] : 0, count ? sum / count : 0);
    return 0;
}
