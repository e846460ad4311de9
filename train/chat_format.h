/* chat_format.h: one chat record -> the text its model's chat template renders, cut into
 * trained and untrained pieces (the `chat_template` path of format: chat).
 *
 * The messages are read as axolotl reads them: the list under field_messages (default
 * "messages"; ShareGPT "conversations" with from/value when that is absent), each message's
 * role and content under the keys of message_property_mappings, roles human and gpt read as
 * user and assistant; every other key of a message (tool_calls, reasoning_content, ...) is
 * passed through to the template. A message with "train": false (or "training": false) is not
 * trained.
 *
 * What is trained: the rendered content of every message whose role is in roles_to_train. When
 * the template has {% generation %} blocks, their output is the assistant content; otherwise a
 * turn's content is found by rendering the conversation again with a placeholder as that turn's
 * content and taking what differs from the real rendering (the way axolotl finds it, since most
 * official templates have no generation tags). The end-of-turn marker after a turn (the first
 * of eot after its content) is trained as train_on_eos says: turn (after each trained turn),
 * last (after the last one), all (every marker in the conversation), none.
 *
 * Thread-safe: the dataset builder calls it from its tokenizer threads. */
#ifndef TRAIN_CHAT_FORMAT_H
#define TRAIN_CHAT_FORMAT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/hooks.h"
#include "tokenizer/chat_template.h"

typedef enum chat_train_eos {
    CHAT_EOS_TURN,
    CHAT_EOS_LAST,
    CHAT_EOS_ALL,
    CHAT_EOS_NONE
} chat_train_eos;

typedef struct chat_format_opts {
    const chat_template *tpl;
    const char *field_messages; /* NULL: "messages", else ShareGPT "conversations" */
    const char *role_key;       /* NULL: "role" */
    const char *content_key;    /* NULL: "content" */
    const char *const *roles_to_train; /* NULL: {"assistant"} */
    size_t n_roles;
    chat_train_eos train_on_eos;
    const char *const *eot; /* end-of-turn texts (at least the EOS token's) */
    size_t n_eot;
    const json_t *kwargs;   /* chat_template_kwargs, may be NULL */
    jinja_limits lim;
} chat_format_opts;

/* The record's messages as the template gets them (new reference), with a parallel array of
 * per-message train flags (malloc'd, NULL allowed). Errors: ERR_DATA without a record prefix. */
int chat_format_messages(const chat_format_opts *o, const json_t *rec, json_t **messages, bool **train);

/* Render rec into f (HOOKS_FORMAT_SEGMENTS). Errors: ERR_DATA ("<template>:line:col: ..." or a
 * record-shape message), without the record's name (the caller adds it). */
int chat_format_record(const chat_format_opts *o, const json_t *rec, hooks_format_result *f);

#endif
