/* Temporary: subcommands not built yet. Each file that implements one removes it here. */
#include <stdio.h>
#include <string.h>

#include "trainer/cli.h"

static int not_yet(const char *name) {
    fprintf(stderr, "llama-adapter %s: not implemented yet\n", name);
    return 2;
}
int cmd_train(int argc, char **argv) { (void)argc; (void)argv; return not_yet("train"); }
int cmd_eval(int argc, char **argv) { (void)argc; (void)argv; return not_yet("eval"); }
int cmd_generate(int argc, char **argv) { (void)argc; (void)argv; return not_yet("generate"); }
int cmd_export(int argc, char **argv) { (void)argc; (void)argv; return not_yet("export"); }
int cmd_inspect_data(int argc, char **argv) { (void)argc; (void)argv; return not_yet("inspect (data)"); }
int cmd_inspect(int argc, char **argv) {
    if (argc >= 2) {
        const char *p = argv[1];
        size_t n = strlen(p);
        if (n > 5 && !strcmp(p + n - 5, ".json") && !strstr(p, "config.json"))
            return cmd_inspect_data(argc, argv);
    }
    return not_yet("inspect");
}
