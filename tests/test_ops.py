"""Preprocessing ops named in a config (pp strings): each op is checked when the config is
read, does what its plain numpy/PIL reference does, draws one set of random values per clip,
and becomes one grain transform."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from mmvit.data import ops


def run(pp, element, mode="train", views=1, seed=0):
  rng = np.random.default_rng(seed)
  for op in ops.parse(pp, mode, views):
    element = op(element, rng if op.random else None)
  return ops.finalize(element)


def photo(h=48, w=64, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("pp, message", [
    ("decod", "unknown op 'decod' (did you mean 'decode'?)"),
    ("resize(abc)", "arguments must be Python literals, got 'abc'"),
    ("resize(0)", "size must be an int >= 1, got 0"),
    ("decode|resize(224)|value_range(1, 0, in_min=5, in_max=5)", "in_max must exceed in_min"),
    ("decode||resize(2)", "an empty op"),
    ("log_mel(16000, window='box')", "window must be 'hamming' or 'hann'"),
    ("inception_crop(224, area_min=0)", "area_min must be a number in [0.01, 100]"),
    ("resize(224, method='lanczos9')", "method must be one of"),
    ("resize(size=1, nope=2)", "unexpected keyword argument 'nope'"),
    ("normalize((0.5, 0.5), std=0)", "std must be > 0"),
    ("", "expected a string of ops"),
])
def test_a_bad_op_or_argument_is_one_line_naming_the_op(pp, message):
  with pytest.raises(ops.PPError) as e:
    ops.parse(pp)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_random_ops_are_refused_in_evaluation_pp():
  for pp in ("random_crop(8)", "flip_lr", "inception_crop(8)", "color_jitter(0.2)",
             "spec_augment", "time_shift(10)"):
    with pytest.raises(ops.PPError, match="random, for training pp only"):
      ops.parse(pp, "eval")
  ops.parse("sample_frames(4)|crop_audio(1.0, 8000)", "eval")  # central windows in eval


def test_decode_gives_the_pixels_pil_gives_and_converts_channels():
  import io
  img = photo()
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, "PNG")
  out = run("decode", {"image": buf.getvalue()})["image"]
  np.testing.assert_array_equal(out, img)
  gray = run("decode(channels=1)", {"image": buf.getvalue()})["image"]
  np.testing.assert_array_equal(gray[..., 0], np.asarray(Image.fromarray(img).convert("L")))


def test_resize_and_resize_small_match_pil():
  img = photo()
  out = run("resize((20, 30))", {"image": img})["image"]
  np.testing.assert_array_equal(out, np.asarray(Image.fromarray(img).resize((30, 20),
                                                                           Image.BILINEAR)))
  small = run("resize_small(24)", {"image": img})["image"]
  assert small.shape == (24, 32, 3)  # the shorter side to 24, the aspect ratio kept


def test_crops_take_the_window_numpy_slicing_takes():
  img = photo()
  np.testing.assert_array_equal(run("central_crop((16, 20))", {"image": img})["image"],
                                img[16:32, 22:42])
  out = run("random_crop(16)", {"image": img})["image"]
  hits = [(t, l) for t in range(33) for l in range(49)
          if np.array_equal(img[t:t + 16, l:l + 16], out)]
  assert len(hits) == 1
  with pytest.raises(ops.PPError, match=r"central_crop\(64, 64\): the input is only 48x64"):
    run("central_crop(64)", {"image": img})


def test_value_range_and_normalize_are_the_linear_maps_they_name():
  img = photo()
  out = run("value_range(-1, 1)", {"image": img})["image"]
  # |out| <= 1 after two float32 ops: error <= 2 * 2**-24 * (255 / 127.5 + 1) ~ 4e-7 on any CPU.
  np.testing.assert_allclose(out, img / 127.5 - 1, atol=1e-6)
  assert out.dtype == np.float32
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  out = run(f"value_range(0, 1)|normalize({mean}, {std})", {"image": img})["image"]
  # |out| <= 2.7 after four float32 ops: error <= 4 * 2**-24 * 2.7 * 4.5 (1/std) ~ 3e-6.
  np.testing.assert_allclose(out, (img / 255 - np.array(mean)) / np.array(std), atol=1e-5)


def test_inception_crop_resizes_a_crop_of_the_image_to_the_size():
  img = np.zeros((48, 64, 3), np.uint8)
  img[:, :32] = 255  # left half white
  outs = [run("inception_crop(16)", {"image": img}, seed=s)["image"] for s in range(20)]
  assert all(o.shape == (16, 16, 3) for o in outs)
  # Different crops on different draws: some all white, some mixed, never new values.
  means = {round(float(o.mean()), 1) for o in outs}
  assert len(means) > 3 and all(o.min() >= 0 and o.max() <= 255 for o in outs)


def test_a_clip_draws_one_crop_one_flip_and_one_jitter_for_all_its_frames():
  frame = photo(32, 32)
  clip = np.stack([frame] * 6)
  for seed in range(8):
    out = run("random_crop(20)|flip_lr|color_jitter(0.4, 0.4, 0.4)", {"video": clip},
              seed=seed)["video"]
    assert out.shape == (6, 20, 20, 3)
    assert all(np.array_equal(out[0], f) for f in out[1:])


def test_sample_frames_trains_on_a_random_window_and_tests_on_central_or_spaced_views():
  clip = np.arange(20)[:, None, None, None] * np.ones((20, 2, 2, 1), np.uint8)
  starts = {int(run("sample_frames(4, 2)", {"video": clip}, seed=s)["video"][0, 0, 0, 0])
            for s in range(40)}
  assert starts == set(range(0, 20 - 7 + 1))  # every window that fits, nothing outside
  central = run("sample_frames(4, 2)", {"video": clip}, "eval")["video"][:, 0, 0, 0]
  np.testing.assert_array_equal(central, [6, 8, 10, 12])
  views = run("sample_frames(4, 2)", {"video": clip}, "eval", views=3)["video"]
  assert views.shape == (3, 4, 2, 2, 1)
  np.testing.assert_array_equal(views[:, 0, 0, 0, 0], ops.window_starts(20, 7, 3))
  assert ops.window_starts(20, 7, 3) == [0, 6, 13]
  short = run("sample_frames(8)", {"video": clip[:3]}, "eval")["video"][:, 0, 0, 0]
  np.testing.assert_array_equal(short, [0, 1, 2, 2, 2, 2, 2, 2])  # the last frame repeated


def test_crop_audio_pads_short_clips_and_scales_int16():
  wav = (np.arange(100) * 300).astype(np.int16)
  out = run("crop_audio(0.02, 8000)", {"audio": wav}, "eval")["audio"]
  assert out.shape == (160,) and out.dtype == np.float32
  np.testing.assert_allclose(out[:100], wav / 32768.0)
  assert not out[100:].any()
  long = np.arange(1000, dtype=np.int16)
  views = run("crop_audio(0.01, 8000)", {"audio": long}, "eval", views=2)["audio"]
  np.testing.assert_allclose(views[:, 0] * 32768, [0, 920])


def test_log_mel_puts_a_tone_in_the_mel_band_of_its_frequency():
  rate, f = 16000, 1000.0
  t = np.arange(rate) / rate
  wav = (0.5 * np.sin(2 * np.pi * f * t) * 32767).astype(np.int16)
  out = run("log_mel(16000, bins=64)", {"audio": wav})["spectrogram"]
  assert out.shape == (100, 64, 1)  # 1 s at a 10 ms hop
  peak = int(np.argmax(out[50, :, 0]))
  mel = lambda hz: 2595 * np.log10(1 + hz / 700)
  centres = np.linspace(mel(0), mel(8000), 66)[1:-1]
  assert abs(peak - int(np.argmin(abs(centres - mel(f))))) <= 1


def test_spec_augment_zeroes_bands_and_nothing_else():
  spec = np.ones((50, 16, 1), np.float32)
  out = run("spec_augment(1, 10, 1, 4)", {"spectrogram": spec}, seed=3)["spectrogram"]
  zero_t = np.where((out == 0).all(axis=(1, 2)))[0]
  zero_f = np.where((out == 0).all(axis=(0, 2)))[0]
  assert len(zero_t) <= 10 and len(zero_f) <= 4
  assert set(np.unique(out)) <= {0.0, 1.0}


def test_rename_keep_and_finalize_leave_batchable_numbers():
  e = {"image": photo(), "label": 3, "path": b"a/b.jpg", "verb": np.int64(2)}
  out = run("rename(noun='label')|keep('image', 'noun', 'verb', 'path')", e)
  assert set(out) == {"image", "noun", "verb"}  # text dropped
  assert out["noun"].dtype == np.int32 and out["verb"].dtype == np.int32


def test_a_missing_feature_is_one_line_naming_the_op_and_what_there_is():
  with pytest.raises(ops.PPError, match=r"pp op 'decode\(key=\"photo\"\)': the element has no "
                                        r"feature 'photo'; it has image, label"):
    run('decode(key="photo")', {"image": b"", "label": 1})


def av_clip(frames=20, fps=4, rate=100):
  """Frame i holds i; audio sample j holds j (int16), so a window shows where it starts."""
  video = np.arange(frames)[:, None, None, None] * np.ones((frames, 2, 2, 1), np.uint8)
  return {"video": video, "audio": np.arange(frames * rate // fps, dtype=np.int16)}


def audio_start(wave):
  return int(round(float(wave[0]) * 32768))


def test_av_window_takes_the_audio_at_the_time_of_the_frames_when_synchronous():
  """Frame s at 4 fps is at s/4 s, i.e. audio sample 25 s at 100 Hz; every training draw and
  every test view starts both windows there (clamped to the track at its end)."""
  pp = "av_window(4, fps=4, seconds=1.0, rate=100, stride=2)"
  for seed in range(30):
    out = run(pp, av_clip(), seed=seed)
    s = int(out["video"][0, 0, 0, 0])
    assert out["video"].shape == (4, 2, 2, 1) and out["audio"].shape == (100,)
    assert audio_start(out["audio"]) == min(25 * s, 500 - 100)
  views = run(pp, av_clip(), "eval", views=3)
  assert views["video"].shape == (3, 4, 2, 2, 1) and views["audio"].shape == (3, 100)
  firsts = views["video"][:, 0, 0, 0, 0].tolist()
  assert firsts == ops.window_starts(20, 7, 3)
  assert [audio_start(w) for w in views["audio"]] == [min(25 * s, 400) for s in firsts]


def test_av_window_draws_the_audio_independently_when_asynchronous():
  """sync=False (MBT's asynchronous sampling): the audio start is its own uniform draw over
  the whole track, so it leaves the frames' time on most draws; evaluation stays aligned."""
  pp = "av_window(4, fps=4, seconds=1.0, rate=100, sync=False)"
  outs = [run(pp, av_clip(), seed=s) for s in range(40)]
  apart = [audio_start(o["audio"]) != min(25 * int(o["video"][0, 0, 0, 0]), 400) for o in outs]
  assert sum(apart) >= 30
  assert {audio_start(o["audio"]) for o in outs} <= set(range(401))
  central = run(pp, av_clip(), "eval")
  assert audio_start(central["audio"]) == 25 * int(central["video"][0, 0, 0, 0])


def test_av_window_pads_a_short_track_and_checks_its_arguments():
  short = dict(av_clip(), audio=np.ones(30, np.int16))
  out = run("av_window(2, fps=4, seconds=1.0, rate=100)", short, "eval")["audio"]
  assert out.shape == (100,) and not out[30:].any()
  with pytest.raises(ops.PPError, match="sync must be True or False"):
    ops.parse("av_window(2, 4, 1.0, 100, sync=1)")
  with pytest.raises(ops.PPError, match="fps must be a number"):
    ops.parse("av_window(2, fps=0, seconds=1.0, rate=100)")
  assert ops.temporal("av_window(2, 4, 1.0, 100)")


def test_every_op_becomes_one_grain_transform_random_ones_random_maps():
  import grain
  ts = ops.to_grain(ops.parse("decode|inception_crop(8)|flip_lr|value_range"))
  kinds = [isinstance(t, grain.transforms.RandomMap) for t in ts]
  assert kinds == [False, True, True, False, False]  # + Finalize


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("decoresizflp_|(),=0123456789 '\"[]ab.-")),
               max_size=40))
def test_fuzz_the_parser_fails_only_with_pp_errors(pp):
  try:
    ops.parse(pp)
  except ops.PPError as e:
    assert "\n" not in str(e)


def test_trailing_value_range_and_normalize_compose_into_one_affine_with_the_host_values():
  """What the step applies to the stored pixels equals what the pipeline's ops give."""
  pp = "resize(16)|value_range(0, 1)|normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))"
  host, tail = ops.split_affine(pp)
  assert host == "resize(16)" and [op.name for op in tail] == ["value_range", "normalize"]
  x = photo()
  stored = run(host, {"image": x})
  (affine,) = ops.compose_affine(tail, stored)
  assert affine.key == "image" and len(affine.scale) == 3
  # Both sides are a few float32 ops on values |y| <= 2.7 (as above): within 1e-5 on any CPU.
  np.testing.assert_allclose(affine(stored["image"]), run(pp, {"image": x})["image"], atol=1e-5)


def test_only_trailing_affine_ops_split_off_and_never_the_whole_string():
  assert ops.split_affine("value_range(0, 1)|color_jitter(0.2)") == (
      "value_range(0, 1)|color_jitter(0.2)", ())
  assert ops.split_affine("normalize(0.5, 0.5)|value_range(0, 1)")[1] == ()
  host, tail = ops.split_affine("value_range(0, 1)|flip_lr|value_range(-1, 1, 0, 1)")
  assert host == "value_range(0, 1)|flip_lr" and len(tail) == 1


def test_the_default_image_key_of_an_affine_is_video_for_clips_and_channels_are_checked():
  clip = {"video": photo()[None].repeat(4, 0)}
  _, tail = ops.split_affine("resize(8)|value_range(-1, 1)")
  (affine,) = ops.compose_affine(tail, clip)
  assert affine.key == "video"
  # One float32 multiply and add to |y| <= 1 on each side: a few ulps of 1, within 8 eps.
  np.testing.assert_allclose(affine(clip["video"]), run("value_range(-1, 1)", clip)["video"],
                             atol=8 * np.finfo(np.float32).eps)
  _, tail = ops.split_affine("resize(8)|normalize((0.5, 0.5), (1, 1))")
  with pytest.raises(ops.PPError, match="2 channels given, the input has 3"):
    ops.compose_affine(tail, {"image": photo()})
