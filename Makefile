# Two commands on a fresh machine:  `make demo`  and  `make test`.
PY := .venv/bin/python
STAMP := .venv/.setup-$(shell cat requirements.txt scripts/setup.sh | sha1sum | cut -c1-12)
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup demo test test-fast bench compare clean-out

setup: $(STAMP)
$(STAMP): requirements.txt scripts/setup.sh
	scripts/setup.sh
	touch $@

# The demo (a few minutes on 2 cores, local Ray, outputs in out/demo): 12 synthetic hand videos whose poses
# recur across videos, then the mine job on them and on the bundled real clip and photos with the MediaPipe
# labeler. Look at out/demo/mine/pairs/_montage.jpg: anchor | its most similar hand from another video.
demo: setup
	$(PY) jobs/synth.py --output out/demo/synth --videos 12 --frames-per-video 60 --width 320 --height 240 --pool-size 6 --pool-prob 0.9 --two-hands-prob 0 --backgrounds data/sample/images/building.jpg --backgrounds data/sample/images/fruits.jpg --montage-videos 4
	$(PY) jobs/mine.py --input out/demo/synth/videos --input data/sample --output out/demo/mine --every-n 5

# The comparison of pre-training methods on 2 CPU cores (<= 60 min): 64 synthetic videos whose 16 key poses recur
# across people, skins, backgrounds and lighting, mined with MediaPipe as a user would, then jobs/compare.py.
COMPARE := out/compare-cpu
compare: setup
	$(PY) jobs/synth.py --output $(COMPARE)/synth --videos 64 --frames-per-video 60 --width 320 --height 240 --pool-size 16 --pool-prob 0.9 --two-hands-prob 0 --backgrounds data/sample/images/building.jpg --backgrounds data/sample/images/fruits.jpg --montage-videos 12
	$(PY) jobs/mine.py --input $(COMPARE)/synth/videos --output $(COMPARE)/mine --every-n 2
	$(PY) jobs/compare.py --mine $(COMPARE)/mine --output $(COMPARE)/compare --preset cpu

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not cluster"

bench: setup
	$(PY) benchmarks/label_throughput.py

clean-out:
	rm -rf out/
