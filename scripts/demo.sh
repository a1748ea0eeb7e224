#!/usr/bin/env bash
# The demo: real ECAM infant-gut data -> qiime aam pretrain -> train -> predict,
# scored on held-out subjects next to q2-sample-classifier's random forest.
# Steps whose output exists are reused; `make clean-demo` starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
OUT=${DEMO_DIR:-demo-output}
export PATH="$PWD/$VENV/bin:$PATH"
mkdir -p "$OUT"
DATA="$OUT/data"

step() { printf '\n== %s\n' "$*"; }
have() { if [ -s "$1" ]; then echo "reusing $1"; return 0; fi; return 1; }

step "Example data: ECAM (Bokulich et al. 2016), subject-grouped split 0"
python -m q2_aam.example_data ecam --output-dir "$DATA" --split 0

step "Pretrain on all samples' tables and UniFrac (no labels)"
have "$OUT/encoder.qza" || qiime aam pretrain \
  --i-table "$DATA/table.qza" --i-sequences "$DATA/rep-seqs.qza" --i-phylogeny "$DATA/tree.qza" \
  --m-subjects-file "$DATA/metadata.tsv" --m-subjects-column subject \
  --p-epochs 5 --o-model "$OUT/encoder.qza" --verbose

step "Train an age regressor on the training subjects"
have "$OUT/model.qza" || qiime aam train \
  --i-table "$DATA/train-table.qza" --i-sequences "$DATA/rep-seqs.qza" \
  --i-phylogeny "$DATA/tree.qza" --i-pretrained "$OUT/encoder.qza" \
  --m-metadata-file "$DATA/metadata.tsv" --m-metadata-column age_days \
  --m-subjects-file "$DATA/metadata.tsv" --m-subjects-column subject \
  --o-model "$OUT/model.qza" --verbose

step "Predict the held-out subjects"
have "$OUT/predictions.qza" || qiime aam predict \
  --i-model "$OUT/model.qza" --i-table "$DATA/test-table.qza" --i-sequences "$DATA/rep-seqs.qza" \
  --o-predictions "$OUT/predictions.qza"

step "Predicted vs observed (q2-sample-classifier scatterplot)"
have "$OUT/scatterplot.qzv" || qiime sample-classifier scatterplot \
  --i-predictions "$OUT/predictions.qza" \
  --m-truth-file "$DATA/metadata.tsv" --m-truth-column age_days \
  --o-visualization "$OUT/scatterplot.qzv"

step "Train a second regressor conditioned on delivery, diet and sex (cross-attention)"
have "$OUT/model-cross-attention.qza" || qiime aam train \
  --i-table "$DATA/train-table.qza" --i-sequences "$DATA/rep-seqs.qza" \
  --i-phylogeny "$DATA/tree.qza" --i-pretrained "$OUT/encoder.qza" \
  --m-metadata-file "$DATA/metadata.tsv" --m-metadata-column age_days \
  --m-subjects-file "$DATA/metadata.tsv" --m-subjects-column subject \
  --m-sample-metadata-file "$DATA/metadata.tsv" --p-categorical-columns delivery diet sex \
  --p-categorical-fusion cross-attention \
  --o-model "$OUT/model-cross-attention.qza" --verbose

have "$OUT/predictions-cross-attention.qza" || qiime aam predict \
  --i-model "$OUT/model-cross-attention.qza" --i-table "$DATA/test-table.qza" \
  --i-sequences "$DATA/rep-seqs.qza" --m-sample-metadata-file "$DATA/metadata.tsv" \
  --o-predictions "$OUT/predictions-cross-attention.qza"

step "Held-out accuracy"
python -m q2_aam.example_data.compare --dataset ecam --split 0 \
  --predictions "$OUT/predictions.qza" --label "AAM (qiime aam)" \
  --predictions "$OUT/predictions-cross-attention.qza" \
  --label "AAM + delivery, diet, sex (cross-attention)"

step "Visualizations: training history, accuracy, what cross-attention learned"
have "$OUT/history.qzv" || qiime aam training-history \
  --i-model "$OUT/model.qza" --o-visualization "$OUT/history.qzv"
have "$OUT/accuracy.qzv" || qiime aam accuracy \
  --i-model "$OUT/model.qza" --i-table "$DATA/test-table.qza" --i-sequences "$DATA/rep-seqs.qza" \
  --m-metadata-file "$DATA/metadata.tsv" --m-metadata-column age_days \
  --o-visualization "$OUT/accuracy.qzv"
have "$OUT/cross-attention.qzv" || qiime aam explain-conditioning \
  --i-model "$OUT/model-cross-attention.qza" --i-table "$DATA/test-table.qza" \
  --i-sequences "$DATA/rep-seqs.qza" --m-sample-metadata-file "$DATA/metadata.tsv" \
  --i-taxonomy "$DATA/taxonomy.qza" --o-visualization "$OUT/cross-attention.qzv"

cat <<DONE

Outputs in $OUT/:
  encoder.qza                 pretrained encoder (AAMModel[AAMEncoder])
  model.qza                   age regressor (AAMModel[AAMRegressor])
  model-cross-attention.qza   age regressor conditioned on delivery, diet, sex
  predictions*.qza            held-out predictions (SampleData[RegressorPredictions])
  scatterplot.qzv             predicted vs observed (q2-sample-classifier)
  history.qzv                 training history of model.qza
  accuracy.qzv                held-out accuracy of model.qza
  cross-attention.qzv         which ASVs attend to which metadata (model-cross-attention.qza)
  data/                       the QIIME 2 artifacts the demo used
View a .qzv with: qiime tools view $OUT/cross-attention.qzv
or drag it onto https://view.qiime2.org
DONE
