/* pubdir.h: publish a directory of files all at once.
 *
 * A writer that produces several files (an adapter, a model directory) builds them in
 * "<final>.tmp.<pid>" and renames that into place only when every file is complete, so a
 * crash, a full disk or a bad input never leaves a half-written directory under the final
 * name. An existing final directory is replaced (moved aside, then removed).
 * Ownership: pubdir_begin returns a malloc'd temp path that pubdir_commit / pubdir_abort free. */
#ifndef FORMATS_PUBDIR_H
#define FORMATS_PUBDIR_H

/* create an empty temp directory next to final (its parents are created) */
int pubdir_begin(char **tmp, const char *final);
/* rename *tmp to final (replacing an existing directory); frees and clears *tmp */
int pubdir_commit(char **tmp, const char *final);
/* remove the temp directory and its contents; frees and clears *tmp (NULL is fine) */
void pubdir_abort(char **tmp);

#endif
