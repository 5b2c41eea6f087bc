/*
 * A stand-in for NVIDIA's NVML library (libnvidia-ml.so) for tests on machines without a GPU:
 * the entry points wattserve calls through nvml-wrapper, with NVML's C ABI and return codes,
 * and GPUs whose behaviour comes from a trace file the test writes, named by the environment
 * variable WATTSERVE_NVML_TRACE (read at nvmlInit):
 *
 *   gpu NAME counter STEP_MS   a GPU with the total-energy counter (mJ), which moves only every
 *                              STEP_MS (20-100 ms on recent GPUs)
 *   gpu NAME power AVG_MS      a GPU without the counter (NOT_SUPPORTED): power only (mW), the
 *                              average over the last AVG_MS (1 s on recent drivers)
 *   watts GPU FROM_MS WATTS    the GPU's true power from FROM_MS on (ms since nvmlInit; 0 before
 *                              the first segment)
 *   lost GPU AT_MS             from AT_MS on, every call on the GPU returns GPU_IS_LOST
 *   stall GPU AT_MS            the energy counter stops moving at AT_MS
 *
 * Lines starting with # are comments. GPUs are numbered in the order of their `gpu` lines.
 * Time is CLOCK_MONOTONIC from nvmlInit. The energy is the exact integral of the piecewise
 * constant power, so a test knows every value the library can return.
 * Built by the tests with the system C compiler (cc -shared -fPIC); never part of a release.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_GPUS 8
#define MAX_SEGMENTS 64

struct segment {
    double from_ms;
    double watts;
};

struct nvmlDevice_st {
    int index;
    char name[64];
    int has_counter;
    double step_ms;      /* counter update period */
    double avg_ms;       /* power averaging window */
    double lost_at_ms;   /* < 0: never */
    double stall_at_ms;  /* < 0: never */
    int segments;
    struct segment seg[MAX_SEGMENTS];
};
typedef struct nvmlDevice_st *nvmlDevice_t;

static struct nvmlDevice_st gpus[MAX_GPUS];
static int gpu_count = 0;
static int init_count = 0;
static struct timespec t0;

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0.tv_sec) * 1e3 + (t.tv_nsec - t0.tv_nsec) / 1e6;
}

/* Joules from 0 to t_ms: the integral of the piecewise constant power. */
static double energy_j(const struct nvmlDevice_st *g, double t_ms) {
    double joules = 0.0;
    for (int i = 0; i < g->segments; i++) {
        double from = g->seg[i].from_ms;
        double to = i + 1 < g->segments ? g->seg[i + 1].from_ms : t_ms;
        if (to > t_ms) to = t_ms;
        if (to > from) joules += g->seg[i].watts * (to - from) / 1e3;
    }
    return joules;
}

static nvmlReturn_t load_trace(void) {
    const char *path = getenv("WATTSERVE_NVML_TRACE");
    if (!path) return NVML_ERROR_DRIVER_NOT_LOADED;
    FILE *f = fopen(path, "r");
    if (!f) return NVML_ERROR_DRIVER_NOT_LOADED;
    char line[256];
    gpu_count = 0;
    while (fgets(line, sizeof line, f)) {
        char kind[16], name[64], method[16];
        int gpu;
        double a, b;
        if (line[0] == '#' || line[0] == '\n') continue;
        if (sscanf(line, "gpu %63s %15s %lf", name, method, &a) == 3 && gpu_count < MAX_GPUS) {
            struct nvmlDevice_st *g = &gpus[gpu_count];
            memset(g, 0, sizeof *g);
            g->index = gpu_count++;
            snprintf(g->name, sizeof g->name, "%s", name);
            g->has_counter = strcmp(method, "counter") == 0;
            g->step_ms = g->has_counter ? a : 0;
            g->avg_ms = g->has_counter ? 1000 : a;
            g->lost_at_ms = -1;
            g->stall_at_ms = -1;
        } else if (sscanf(line, "watts %d %lf %lf", &gpu, &a, &b) == 3 && gpu >= 0 &&
                   gpu < gpu_count && gpus[gpu].segments < MAX_SEGMENTS) {
            struct nvmlDevice_st *g = &gpus[gpu];
            g->seg[g->segments].from_ms = a;
            g->seg[g->segments].watts = b;
            g->segments++;
        } else if (sscanf(line, "%15s %d %lf", kind, &gpu, &a) == 3 && gpu >= 0 && gpu < gpu_count) {
            if (strcmp(kind, "lost") == 0) gpus[gpu].lost_at_ms = a;
            if (strcmp(kind, "stall") == 0) gpus[gpu].stall_at_ms = a;
        }
    }
    fclose(f);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) {
    if (init_count++ > 0) return NVML_SUCCESS;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    nvmlReturn_t r = load_trace();
    if (r != NVML_SUCCESS) init_count = 0;
    return r;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return nvmlInit_v2();
}

nvmlReturn_t nvmlShutdown(void) {
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    init_count--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t copy_string(const char *s, char *out, unsigned int length) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, s, strlen(s) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    return copy_string("560.35.03", version, length);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned int)gpu_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= (unsigned int)gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

/* NVML_ERROR_GPU_IS_LOST once the trace says so, for every call on the GPU. */
static nvmlReturn_t check(nvmlDevice_t d) {
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    if (!d) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->lost_at_ms >= 0 && now_ms() >= d->lost_at_ms) return NVML_ERROR_GPU_IS_LOST;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length) {
    nvmlReturn_t r = check(d);
    return r != NVML_SUCCESS ? r : copy_string(d->name, name, length);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length) {
    nvmlReturn_t r = check(d);
    if (r != NVML_SUCCESS) return r;
    char s[80];
    snprintf(s, sizeof s, "GPU-00000000-0000-0000-0000-%012d", d->index);
    return copy_string(s, uuid, length);
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t d, unsigned long long *energy) {
    nvmlReturn_t r = check(d);
    if (r != NVML_SUCCESS) return r;
    if (!energy) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->has_counter) return NVML_ERROR_NOT_SUPPORTED;
    double t = now_ms();
    if (d->stall_at_ms >= 0 && t > d->stall_at_ms) t = d->stall_at_ms;
    /* The counter holds the energy at the last update. */
    double updated = d->step_ms > 0 ? (double)(long long)(t / d->step_ms) * d->step_ms : t;
    *energy = (unsigned long long)(energy_j(d, updated) * 1e3);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *power) {
    nvmlReturn_t r = check(d);
    if (r != NVML_SUCCESS) return r;
    if (!power) return NVML_ERROR_INVALID_ARGUMENT;
    double t = now_ms();
    double from = t - d->avg_ms;
    double joules = energy_j(d, t) - (from > 0 ? energy_j(d, from) : 0.0);
    double span_ms = from > 0 ? d->avg_ms : t;
    *power = span_ms > 0 ? (unsigned int)(joules / (span_ms / 1e3) * 1e3) : 0;
    return NVML_SUCCESS;
}
