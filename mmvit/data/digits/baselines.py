"""Quick baselines of the AV datasets (a difficulty check, not a test).

    JAX_PLATFORMS=cpu python -m mmvit.data.digits.baselines av_digits [--data_dir D]
    JAX_PLATFORMS=cpu python -m mmvit.data.digits.baselines av_digits --fresh 4000

Inputs are the preprocessed central windows (what `eval_batches` gives):
video (8, 32, 32) as 8 channels, spectrogram (64, 32, 1). Models:

* ``video`` / ``audio``: a small CNN per modality (3 conv layers with
  max-pooling, global average pool, 64-unit hidden layer; AdamW, 20 epochs)
  trained on the dataset's label (video: the mean of the window's frames);
* ``late_lr``: logistic regression on the concatenated penultimate features of
  those two CNNs (late fusion of independently trained single-modality nets);
* ``fused``: the same two CNN branches trained jointly through one head on the
  concatenated branch features (mid fusion);
* ``stacked`` (``--only stacked``): per-modality CNNs trained on the stored
  shown / spoken digits (as co-training with digit tasks would give), then an
  MLP on their concatenated features trained on the label; also reports the
  per-modality digit accuracies ``video_digit`` / ``audio_digit``.

Test accuracy (av_multilabel: macro mAP). `--fresh N` generates N train
examples in memory and uses the validation split as test (for tuning the
degradations in `synth.py` without building).
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mmvit.data.digits import preprocess, synth


def video_probe_input(video: np.ndarray) -> np.ndarray:
  """(8, 32, 32, 1) window -> (16, 16, 1): mean over frames, 2x2 mean-pooled
  (cheap on a 2-core machine; the 8x8 scans carry no finer detail)."""
  x = video.mean(0)
  return x.reshape(16, 2, 16, 2, 1).mean((1, 3))


def windows(name: str, examples) -> dict[str, np.ndarray]:
  """Raw AV examples -> central-window model inputs, labels and metadata."""
  decode, window = preprocess.Decode(name), preprocess.Window(name)
  video, spec, shown, spoken, label = [], [], [], [], []
  for e in examples:
    w = window.map(decode.map(e))
    video.append(video_probe_input(w['video']))
    spec.append(preprocess.log_mel(w['waveform']))
    shown.append(int(e['shown']))
    spoken.append(int(e['spoken']))
    label.append(np.asarray(e['labels'] if 'labels' in e else e['label']))
  return {'video': np.array(video), 'audio': np.array(spec),
          'shown': np.array(shown), 'spoken': np.array(spoken),
          'label': np.array(label)}


# ---------------------------------------------------------------- CNN -------

WIDTHS = {'video': (16, 32, 64), 'audio': (8, 16, 32)}


def _init(key, in_channels: dict[str, int], n_out: int):
  params = {}
  keys = iter(jax.random.split(key, 32))
  for m, c in in_channels.items():
    convs = []
    for cout in WIDTHS[m]:
      w = jax.random.normal(next(keys), (3, 3, c, cout)) * np.sqrt(2 / (9 * c))
      convs.append((w, np.zeros(cout, np.float32)))
      c = cout
    params[m] = convs
  d = sum(WIDTHS[m][-1] for m in in_channels)
  params['hidden'] = (jax.random.normal(next(keys), (d, 64)) * np.sqrt(2 / d),
                      np.zeros(64, np.float32))
  params['out'] = (jax.random.normal(next(keys), (64, n_out)) * 0.01,
                   np.zeros(n_out, np.float32))
  return params


def _forward(params, inputs: dict):
  """-> (logits, penultimate features)."""
  feats = []
  for m in sorted(k for k in params if k not in ('hidden', 'out')):
    x = inputs[m]
    for w, b in params[m]:
      x = jax.lax.conv_general_dilated(
          x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      x = jax.nn.relu(x + b)
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                                (1, 2, 2, 1), 'VALID')
    feats.append(x.mean((1, 2)))
  h = jax.nn.relu(jnp.concatenate(feats, -1) @ params['hidden'][0]
                  + params['hidden'][1])
  return h @ params['out'][0] + params['out'][1], h


def train_cnn(train: dict, test: dict, modalities: tuple[str, ...],
              multilabel: bool, epochs: int = 20, batch: int = 128,
              seed: int = 0):
  """Trains a CNN over `modalities`; returns (test scores, train feats,
  test feats). Scores are class probabilities (sigmoid if multilabel)."""
  y = train['label']
  n_out = y.shape[1] if multilabel else int(y.max()) + 1
  params = _init(jax.random.PRNGKey(seed),
                 {m: train[m].shape[-1] for m in modalities}, n_out)
  steps = epochs * (len(y) // batch)
  opt = optax.adamw(optax.cosine_decay_schedule(3e-3, steps), weight_decay=1e-3)
  state = opt.init(params)

  def loss_fn(p, x, t):
    logits, _ = _forward(p, x)
    if multilabel:
      return optax.sigmoid_binary_cross_entropy(logits, t).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, t).mean()

  @jax.jit
  def step(p, s, x, t):
    g = jax.grad(loss_fn)(p, x, t)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  @jax.jit
  def predict(p, x):
    logits, h = _forward(p, x)
    return (jax.nn.sigmoid(logits) if multilabel
            else jax.nn.softmax(logits)), h

  rng = np.random.default_rng(seed)
  for _ in range(epochs):
    perm = rng.permutation(len(y))
    for i in range(0, len(y) - batch + 1, batch):
      j = perm[i:i + batch]
      params, state = step(params, state, {m: train[m][j] for m in modalities},
                           y[j])

  def run(d):
    outs = [predict(params, {m: d[m][i:i + 500] for m in modalities})
            for i in range(0, len(d['label']), 500)]
    return (np.concatenate([np.asarray(o[0]) for o in outs]),
            np.concatenate([np.asarray(o[1]) for o in outs]))

  scores, h_test = run(test)
  _, h_train = run(train)
  return scores, h_train, h_test


def _score(scores, labels, multilabel: bool) -> float:
  if multilabel:
    return float(average_precision_score(labels, scores, average='macro'))
  return float((scores.argmax(-1) == labels).mean())


def probe(name: str, train: dict, test: dict, epochs: int = 20,
          modalities=('video', 'audio', 'fused')) -> dict[str, float]:
  """Test accuracy (av_multilabel: mAP) of the baselines."""
  multilabel = name == 'av_multilabel'
  fit = functools.partial(train_cnn, train, test, multilabel=multilabel,
                          epochs=epochs)
  out, feats = {}, {}
  for m in ('video', 'audio'):
    if m in modalities:
      scores, h_train, h_test = fit((m,))
      out[m] = _score(scores, test['label'], multilabel)
      feats[m] = (h_train, h_test)
  if len(feats) == 2:
    lr = make_pipeline(StandardScaler(), LogisticRegression(C=0.1,
                                                            max_iter=1000))
    if multilabel:
      lr = OneVsRestClassifier(lr)
    x = np.concatenate([feats['video'][0], feats['audio'][0]], 1)
    xt = np.concatenate([feats['video'][1], feats['audio'][1]], 1)
    lr.fit(x, train['label'])
    out['late_lr'] = _score(lr.predict_proba(xt), test['label'], multilabel)
  if 'fused' in modalities:
    scores, _, _ = fit(('audio', 'video'))
    out['fused'] = _score(scores, test['label'], multilabel)
  if 'stacked' in modalities:
    # Digit features per modality (trained on the stored shown / spoken
    # digits, as co-training with digit tasks would give), then an MLP on
    # their concatenation trained on the dataset's label.
    hs = []
    for m, digit in (('video', 'shown'), ('audio', 'spoken')):
      scores, h_train, h_test = train_cnn(
          {**train, 'label': train[digit]}, {**test, 'label': test[digit]},
          (m,), False, epochs=epochs)
      out[f'{m}_digit'] = _score(scores, test[digit], False)
      hs.append((h_train, h_test))
    mlp = make_pipeline(StandardScaler(), MLPClassifier(
        (64,), alpha=1e-2, max_iter=500, random_state=0))
    if multilabel:
      mlp = OneVsRestClassifier(mlp)
    mlp.fit(np.concatenate([h[0] for h in hs], 1), train['label'])
    out['stacked'] = _score(
        mlp.predict_proba(np.concatenate([h[1] for h in hs], 1)),
        test['label'], multilabel)
  return out


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument('name', choices=synth.AV_DATASETS)
  p.add_argument('--data_dir', default=None)
  p.add_argument('--fresh', type=int, default=0,
                 help='generate this many train examples in memory instead')
  p.add_argument('--epochs', type=int, default=20)
  p.add_argument('--only', default='video,audio,fused')
  p.add_argument('--video_quality', default='',
                 help='with --fresh: overrides, e.g. "noise_std=(0.2,0.3)"')
  p.add_argument('--audio_quality', default='',
                 help='with --fresh: overrides, e.g. "snr_db=(-6,0)"')
  args = p.parse_args(argv)
  t = time.perf_counter()
  if args.fresh:
    import ast  # pylint: disable=g-import-not-at-top
    import dataclasses  # pylint: disable=g-import-not-at-top

    for arg, table in ((args.video_quality, synth.AV_VIDEO_QUALITY),
                       (args.audio_quality, synth.AV_AUDIO_QUALITY)):
      if arg:
        call = ast.parse(f'f({arg})', mode='eval').body
        kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        table[args.name] = dataclasses.replace(table[args.name], **kw)
    import itertools  # pylint: disable=g-import-not-at-top
    train = windows(args.name, (e for _, e in itertools.islice(
        synth.av_examples(args.name, 'train'), args.fresh)))
    test = windows(args.name, (
        e for _, e in synth.av_examples(args.name, 'validation')))
  else:
    import mmvit.data as data  # pylint: disable=g-import-not-at-top

    def read(split):
      src = data.data_source(args.name, split, args.data_dir)
      return windows(args.name, src.__getitems__(range(len(src))))
    train, test = read('train'), read('test')
  t_data = time.perf_counter() - t
  res = probe(args.name, train, test, epochs=args.epochs,
              modalities=tuple(args.only.split(',')))
  print(args.name, {k: round(v, 3) for k, v in res.items()},
        f'(data {t_data:.1f} s, fit {time.perf_counter() - t - t_data:.1f} s)',
        flush=True)


if __name__ == '__main__':
  main()
