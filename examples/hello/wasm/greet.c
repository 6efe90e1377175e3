/*
 * greet: the WASM module of the hello example.
 *
 * Usage: greet GREETING
 * Reads the name to greet from the first line of /data/name.txt (a preopened volume) and who
 * asked from FORGE_WHO, then writes "GREETING, NAME (asked by WHO)" to stdout and to
 * /data/result.txt.
 *
 * Exit codes: 0 done, 1 usage, 2 /data/name.txt cannot be read, 3 the greeting cannot be written.
 *
 * Build: clang --target=wasm32-wasi -O2 greet.c -o greet.wasm
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_FILE "/data/name.txt"
#define RESULT_FILE "/data/result.txt"

/* Read the first line of `path` without its line ending; NULL with errno set on failure. */
static char *read_first_line(const char *path) {
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        return NULL;
    }

    char *line = NULL;
    size_t capacity = 0;
    errno = 0; /* getline leaves errno alone at end of file but sets it when out of memory */
    ssize_t length = getline(&line, &capacity, file);
    int read_failed = length < 0 && (ferror(file) || errno != 0);
    int saved_errno = errno;
    fclose(file);

    if (read_failed) {
        free(line);
        errno = saved_errno;
        return NULL;
    }
    if (length < 0) {
        /* An empty file holds an empty name. */
        free(line);
        return strdup("");
    }
    line[strcspn(line, "\r\n")] = '\0';
    return line;
}

/* Write `text` to `path`, replacing it; 0 on success, -1 with errno set on failure. */
static int write_file(const char *path, const char *text) {
    FILE *file = fopen(path, "w");
    if (file == NULL) {
        return -1;
    }

    int failed = fputs(text, file) == EOF;
    failed |= fclose(file) != 0;
    return failed ? -1 : 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s GREETING\n", argc > 0 ? argv[0] : "greet");
        return 1;
    }
    const char *greeting = argv[1];
    const char *who = getenv("FORGE_WHO");
    if (who == NULL) {
        who = "nobody";
    }

    char *name = read_first_line(NAME_FILE);
    if (name == NULL) {
        fprintf(stderr, "greet: cannot read %s: %s\n", NAME_FILE, strerror(errno));
        return 2;
    }

    int size = snprintf(NULL, 0, "%s, %s (asked by %s)\n", greeting, name, who);
    char *message = size < 0 ? NULL : malloc((size_t)size + 1);
    if (message == NULL) {
        fprintf(stderr, "greet: cannot build the greeting\n");
        free(name);
        return 3;
    }
    snprintf(message, (size_t)size + 1, "%s, %s (asked by %s)\n", greeting, name, who);
    free(name);

    int status = 0;
    if (fputs(message, stdout) == EOF || fflush(stdout) != 0) {
        fprintf(stderr, "greet: cannot write to stdout: %s\n", strerror(errno));
        status = 3;
    }
    if (write_file(RESULT_FILE, message) != 0) {
        fprintf(stderr, "greet: cannot write %s: %s\n", RESULT_FILE, strerror(errno));
        status = 3;
    }
    free(message);
    return status;
}
