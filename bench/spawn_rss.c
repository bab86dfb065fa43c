/* Runs argv[1..] and prints "<peak RSS KiB> <exit status>". A tiny parent matters: a forked
 * child's peak RSS starts from the parent's resident set (vfork/posix_spawn from Python would
 * report Python's ~15 MiB for every command). */
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    pid_t pid = fork();
    if (pid == 0) { execv(argv[1], argv + 1); _exit(127); }
    int status; struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) return 2;
    printf("%ld %d\n", ru.ru_maxrss, status);
    return 0;
}
