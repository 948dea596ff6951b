/* llama-adapter: entry point; dispatches to the subcommands of trainer/cli.h. */
#include <stdio.h>
#include <string.h>

#include "trainer/cli.h"

static const char USAGE[] =
    "llama-adapter: LLaMA-Adapter fine-tuning in C\n"
    "\n"
    "usage: llama-adapter COMMAND [options]   (llama-adapter COMMAND --help for its options)\n"
    "\n"
    "commands:\n"
    "  train     fine-tune adaption prompts and gates (or every weight with --method full)\n"
    "  eval      loss and perplexity of a model (with or without an adapter) on Alpaca data\n"
    "  generate  generate text from an instruction or a raw prompt\n"
    "  export    write an adapter checkpoint as safetensors, PyTorch .pth or HDF5\n"
    "  inspect   describe a model file/directory, a checkpoint or an Alpaca data file\n";

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "train")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "export")) return cmd_export(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect")) return cmd_inspect(argc - 1, argv + 1);
    fprintf(stderr, "llama-adapter: unknown command '%s' (try llama-adapter --help)\n", cmd);
    return 2;
}
