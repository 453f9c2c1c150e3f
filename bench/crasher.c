/* The crash-to-restart program: append CLOCK_MONOTONIC (ns) to the file named by argv[1],
 * then exit 1 at once. A C program so that the measured gap holds the supervisor's work and
 * exec, not an interpreter's start-up. Built by bench/run.py with the system's cc. */
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec ts;
    char line[32];
    int fd, n;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (argc < 2)
        return 2;
    n = snprintf(line, sizeof line, "%lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return 3;
    if (write(fd, line, (size_t)n) != n)
        return 4;
    _exit(1);
}
