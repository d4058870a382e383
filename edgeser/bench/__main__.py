"""`python -m edgeser.bench BUNDLE ...`: the `edgeser bench` command on its own."""

from edgeser.bench.commands import bench_command

if __name__ == "__main__":
    bench_command(prog_name="edgeser bench")
