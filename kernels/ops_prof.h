/* ops_prof.h: an op table that times every op of another, call by call.
 *
 * ops_prof_wrap fills a copy of a backend's table whose compute ops (and copy, zero, upload,
 * download) each set a clock mark before and after calling the real op. A model run through the
 * copy (m->ops) does the same work, bit for bit; ops_prof_report_make then sums each op's time by
 * name and shape (a linear's rows x cols, with LoRA, dropout or dense weights) and the time between
 * one op's end and the next op's start: on a GPU the device waiting for the host (launch overhead,
 * the host's own syncs), the most a CUDA graph of the step could take back. The clock is the
 * caller's: CUDA events on the ops' stream (bench/train_gpu --profile) or the wall clock, whose
 * marks on the CPU backend are exact because its ops have finished when they return. One profile
 * at a time (the wrapped functions reach the real table through this module's state). */
#ifndef KERNELS_OPS_PROF_H
#define KERNELS_OPS_PROF_H

#include <stdio.h>

#include "kernels/ops.h"

typedef struct ops_prof_clock {
    /* room for marks [0, n) (called as the calls outgrow it, n doubling); 0, or -1 when none */
    int (*reserve)(void *ud, int n);
    /* set mark i (< the n reserved) once the work queued so far has run; 0, or -1 when it cannot */
    int (*mark)(void *ud, int i);
    /* milliseconds from mark a to mark b, once that work has run (after the table's sync) */
    double (*ms)(void *ud, int a, int b);
    void *ud;
} ops_prof_clock;

/* the host's monotonic clock (the CPU backend) */
ops_prof_clock ops_prof_wall_clock(void);

/* out = real with every timed op wrapped; counting starts afresh */
void ops_prof_wrap(ops_table *out, const ops_table *real, const ops_prof_clock *clock);

#define OPS_PROF_ROWS 96
typedef struct ops_prof_row {
    char name[64]; /* "qlinear_fwd 4096x4096 +LoRA +dropout", "attention_bwd", ... */
    int calls;
    double ms; /* the calls' time from the mark before to the mark after, summed */
} ops_prof_row;

typedef struct ops_prof_report {
    ops_prof_row rows[OPS_PROF_ROWS]; /* most time first; the last row takes names beyond it */
    int nrows, calls;
    double span_ms;  /* the first call's start to the last call's end */
    double busy_ms;  /* the calls' own time, summed */
    double idle_ms;  /* between one call's end and the next call's start, summed */
    int idle_gaps;   /* gaps of more than 2 us (CUDA events resolve about 0.5 us) */
    struct {
        double ms;
        char after[64], before[64];
    } worst[4];      /* the largest gaps, with the ops either side */
} ops_prof_report;

/* after the wrapped table's work has run (its sync): the calls since ops_prof_wrap, by name.
 * 0, or -1 (err_msg) when no op was called or a mark could not be set. */
int ops_prof_report_make(ops_prof_report *r);

/* the report as a markdown table and two lines (what: "one step, 2048 tokens") */
void ops_prof_print(FILE *f, const ops_prof_report *r, const char *what);

#endif
