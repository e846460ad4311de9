/* tfevents.h: TensorBoard event files (docs/tensorboard.md): scalars, written as TensorFlow's
 * summary writer writes them, so TensorBoard's own reader loads them.
 *
 * A file is a sequence of TFRecords: uint64 length (little endian), uint32 masked CRC-32C of
 * those 8 bytes, the data, uint32 masked CRC-32C of the data; masked(c) = ((c >> 15) |
 * (c << 17)) + 0xa282ead8. Each record is one serialized tensorflow.Event protobuf: the first
 * carries file_version "brain.Event:2", every later one wall_time, step and a Summary with one
 * Value {tag, simple_value}. Records are flushed as they are written, so TensorBoard follows a
 * run live; a file cut by a crash loses at most its last record, which readers skip.
 *
 * Ownership: tfevents_open allocates the writer; tfevents_close flushes, closes and frees it. */
#ifndef FORMATS_TFEVENTS_H
#define FORMATS_TFEVENTS_H

#include <stddef.h>
#include <stdint.h>

typedef struct tfevents tfevents;

/* Create dir (and parents) and dir/events.out.tfevents.<unix time>.<host>.<pid>.qlora-run with its
 * file_version record. 0 or ERR_STAGE. */
int tfevents_open(tfevents **out, const char *dir, double wall_time);
int tfevents_scalar(tfevents *w, const char *tag, int64_t step, double wall_time, float value);
void tfevents_close(tfevents **w);
const char *tfevents_path(const tfevents *w);

/* CRC-32C (Castagnoli, reflected, as in iSCSI and TFRecord) and its TFRecord mask */
uint32_t tfevents_crc32c(const void *data, size_t n);
uint32_t tfevents_masked_crc(const void *data, size_t n);

/* The serialized Event for one scalar into buf (at least 64 + strlen(tag) bytes); its length. */
size_t tfevents_encode_scalar(uint8_t *buf, const char *tag, int64_t step, double wall_time, float value);

#endif
