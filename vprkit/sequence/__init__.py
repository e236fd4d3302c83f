"""Sequence matching: localize a stream of frames (SeqSLAM, HMM) on any global descriptor.

Above the index, beside re-ranking: nothing below imports it. `pipeline` is the step (presets + `main`),
`SequenceLocalizer` the streaming API (docs/sequence.md).
"""
