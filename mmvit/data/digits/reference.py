"""Fingerprints of the digits suite's splits as built on the reference machine (AMD EPYC,
2 cores, x86-64 Linux, Python 3.11, numpy/scipy from uv.lock); a 2-core Intel Xeon with
AVX-512 gave the same. See `mmvit.data.fingerprints` for what a fingerprint is."""

# (dataset, version) -> split -> fingerprint
FINGERPRINTS: dict[tuple[str, str], dict[str, str]] = {
    ("digits_image", "1.0.0"): {"train": "fba58d3075cf3ea5", "validation": "2d6e79179c392ad4",
                                "test": "4aca4d74e532b35e"},
    ("digits_video", "1.1.0"): {"train": "4ea91c2d57805aae", "validation": "53b3683f96b911dc",
                                "test": "457e1598211afaf1"},
    ("digits_audio", "1.1.0"): {"train": "0745adb188282d58", "validation": "e1b44df123658f86",
                                "test": "b84ef27c78bb3b83"},
    ("av_digits", "1.3.0"): {"train": "9e36dbbe2c428f6c", "validation": "7da531ece47df87b",
                             "test": "2c47c62bac3b8a2c"},
    ("av_xor", "1.2.0"): {"train": "bf33d07ec263b2bf", "validation": "763a772eaced3b8b",
                          "test": "ce67811524d4aea0"},
    ("av_multilabel", "1.3.0"): {"train": "004125b8cefcda56", "validation": "72cc15d2524bed67",
                                 "test": "0bcb87e24b5b4fad"},
}
