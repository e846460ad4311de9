/* tensorboard.h: `report_to: [tensorboard]`: the run's scalars as TensorBoard event files in
 * the run record (runs/<recipe>/<time>/tensorboard/), written while the run goes (a tap on the
 * event log), so `tensorboard --logdir runs/<recipe>` shows every run of the recipe, live.
 *
 * Tags: <stage>/loss, <stage>/learning_rate, <stage>/grad_norm, <stage>/tokens_per_s per
 * training step; <stage>/val_loss and <stage>/perplexity at each evaluation; every metric a
 * stage records, as metrics/<stage>.<metric> at step 0, when the stage ends. */
#ifndef RUNNER_TENSORBOARD_H
#define RUNNER_TENSORBOARD_H

#include "core/events.h"

typedef struct tb_sink tb_sink;

/* Open run_dir/tensorboard/events.out.tfevents.* and tap ev; 0 or ERR_STAGE. */
int tb_open(tb_sink **out, const char *run_dir, events *ev);
/* Untap, close, free; a write that failed during the run is reported here (returns ERR_STAGE). */
int tb_close(tb_sink **s, events *ev);

#endif
