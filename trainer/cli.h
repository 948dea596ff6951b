/* Subcommands of the llama-adapter binary. Each takes the arguments after its name
 * (argv[0] is the subcommand), prints one line on failure and returns the exit status. */
#ifndef TRAINER_CLI_H
#define TRAINER_CLI_H
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
/* One training per (adapter_len, adapter_layer) pair, then a results table and plot (cmd_sweep.c). */
int cmd_sweep(int argc, char **argv);
/* Loss and lr curves of runs as an SVG (cmd_plot.c). */
int cmd_plot(int argc, char **argv);
/* inspect of an Alpaca JSON file: `inspect DATA.json --tokenizer T [--max-seq-len N]`. */
int cmd_inspect_data(int argc, char **argv);
#endif
