"""``flowerbed bench``: a grid of experiments (attacks × defences × seeds), run on the
platform's simulation and tabulated from the run folders it writes."""
