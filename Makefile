# Shortcuts; the scripts are the source of truth (make is optional).
.PHONY: quickstart test proto typecheck bench
quickstart:
	scripts/quickstart.sh
test:
	scripts/test.sh
proto:
	.venv/bin/python scripts/genproto.py
typecheck:
	.venv/bin/mypy swarmd swarmctl
bench:
	.venv/bin/python bench/bench_single_node.py
