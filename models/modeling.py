"""The classifier: BERT encoder, mean pooling over real tokens, dropout, linear head.

Mean pooling is what all-MiniLM-L6-v2 was trained with, so the pooled vector is a good sentence
embedding from step 0 and the head learns quickly. Being a ``PreTrainedModel`` subclass,
``save_pretrained`` writes safetensors and ``MeanPoolClassifier.from_pretrained`` reloads it without
remote code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1.0)


class MeanPoolClassifier(BertPreTrainedModel):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """``.logits`` of shape (batch, num_labels); the HF output type keeps HF pipelines working."""
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        pooled = mean_pool(out.last_hidden_state, attention_mask)
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))


class TooManyLayers(ValueError):
    """More encoder layers asked for than the base encoder has."""


def init_from_encoder(
    encoder_dir: Path, labels: Sequence[str], dropout: float = 0.1, layers: int | None = None,
) -> MeanPoolClassifier:
    """A fresh classifier over ``labels`` with the encoder's weights and a randomly initialised head.

    ``layers`` keeps only the encoder's bottom ``layers`` transformer layers: the top ones are the
    most task-specific and the cheapest to lose when fine-tuning (Sajjad et al., "On the effect of
    dropping layers of pre-trained transformer models", 2023), and each one dropped is a sixth of a
    MiniLM-L6 forward pass saved.

    Call ``torch.manual_seed`` first: the head's initialisation draws from the global generator.
    """
    config = BertConfig.from_pretrained(
        encoder_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        classifier_dropout=dropout,
    )
    if layers is not None:
        base_layers = config.num_hidden_layers
        if not 1 <= layers <= base_layers:
            raise TooManyLayers(f"the base encoder has {base_layers} layers; keep between 1 and {base_layers}, not {layers}")
        config.num_hidden_layers = layers
    # fp32 master weights whatever the checkpoint's dtype (the GPU copy of the encoder is fp16).
    return MeanPoolClassifier.from_pretrained(encoder_dir, config=config, dtype=torch.float32)


def labels_of(model: MeanPoolClassifier) -> tuple[str, ...]:
    id2label = model.config.id2label
    return tuple(id2label[i] for i in range(len(id2label)))
