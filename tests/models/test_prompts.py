"""Prompt styles, how answers join prompts (BOS, BPE word starts), answer cleaning and budgets."""

from __future__ import annotations

import dataclasses

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from raysem.data.datasets import load_facts
from raysem.models.generate import greedy_answers
from raysem.models.loader import LoadedModel
from raysem.models.prompts import FEWSHOT_EXEMPLARS, Prompting, fewshot_prompt, first_line

from conftest import SHARED_DATA

QUESTION = "What is the capital of Freedonia?"


def styled(lm: LoadedModel, **prompting) -> LoadedModel:
    return dataclasses.replace(lm, prompting=Prompting(**prompting))


def bpe_tokenizer(add_bos: bool) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (as GPT-2's and BLOOM's): a leading space is part of a word's token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"Q: {q}\nA: {a}\n" for q, a in FEWSHOT_EXEMPLARS] + [f"{QUESTION} Paris Paris Fredville"] * 3
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def test_prompting_is_validated():
    with pytest.raises(ValueError, match="prompt style must be one of chat, fewshot, zeroshot, got 'qa'"):
        Prompting("qa")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="answer budget"):
        Prompting(budget="long")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="free_tokens"):
        Prompting(budget="free", free_tokens=0)
    assert Prompting().key() == {"prompt_style": "fewshot", "answer_budget": "target"}
    assert Prompting("chat", "free", 12).key() == {"prompt_style": "chat", "answer_budget": "free:12"}


def test_fewshot_prompt_and_first_line():
    prompt = fewshot_prompt(QUESTION)
    assert prompt.startswith("Q: What is the chemical symbol for gold?\nA: Au\n\n")
    assert prompt.endswith(f"\n\nQ: {QUESTION}\nA:") and prompt.count("\nA: ") == len(FEWSHOT_EXEMPLARS)
    assert first_line(" Paris\nQ: next question") == "Paris"
    assert first_line("\n\n  John Williams \nA: x") == "John Williams"
    assert first_line("") == ""


def test_exemplars_come_from_no_dataset():
    """The demonstrations must not give away (or echo) any fact a study learns or tests."""
    names = ["worldfacts", "worldfacts-cf"] + [n for n in ("zsre", "counterfact") if SHARED_DATA.is_dir()]
    for name in names:
        facts = load_facts(name).facts
        questions = {f.prompt.strip().lower() for f in facts} | {
            r.strip().lower() for f in facts for r in f.rephrasings
        }
        for question, _ in FEWSHOT_EXEMPLARS:
            assert question.lower() not in questions, (name, question)


def test_styles_on_a_chat_model(tiny):
    chat, few = styled(tiny, style="chat"), styled(tiny, style="fewshot")
    assert chat.format_prompt(QUESTION) == tiny.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    assert few.format_prompt(QUESTION) == fewshot_prompt(QUESTION)  # SmolLM2's tokenizer adds no BOS
    tok = tiny.tokenizer
    # chat: the answer follows the assistant header directly; fewshot: after one space, as one word-start token
    assert chat.prompt_and_answer_ids(QUESTION, "Paris")[1] == tok("Paris", add_special_tokens=False).input_ids
    prompt_ids, answer_ids = few.prompt_and_answer_ids(QUESTION, "Paris")
    assert (
        answer_ids
        == tok(" Paris", add_special_tokens=False).input_ids
        != tok("Paris", add_special_tokens=False).input_ids
    )
    assert tok.decode(prompt_ids + answer_ids) == fewshot_prompt(QUESTION) + " Paris"
    assert few.answer_budget(QUESTION, "Paris") == len(answer_ids)
    assert styled(tiny, style="fewshot", budget="free", free_tokens=7).answer_budget(QUESTION, "Paris") == 7


def test_zeroshot_joins_the_raw_question_and_the_answer_on_a_chat_model(tiny):
    """``zeroshot`` ignores the model's chat template: the raw question, then the answer after one space."""
    zero = styled(tiny, style="zeroshot")
    assert not zero.uses_chat_template and zero.format_prompt(QUESTION) == QUESTION  # SmolLM2 adds no BOS
    tok = tiny.tokenizer
    prompt_ids, answer_ids = zero.prompt_and_answer_ids(QUESTION, "Paris")
    assert answer_ids == tok(" Paris", add_special_tokens=False).input_ids
    assert tok.decode(prompt_ids + answer_ids) == f"{QUESTION} Paris"
    assert zero.clean_answer(" Paris\nQ: next ") == "Paris\nQ: next"  # the target budget cuts at no newline
    assert styled(tiny, style="zeroshot", budget="free").clean_answer(" Paris\nQ: next") == "Paris"


def test_answers_are_cleaned_by_style(tiny):
    assert styled(tiny, style="fewshot").clean_answer(" Paris\nQ: What") == "Paris"
    assert styled(tiny, style="chat").clean_answer(" The capital\nis Paris ") == "The capital\nis Paris"
    assert styled(tiny, style="chat", budget="free").clean_answer(" The capital\nis Paris") == "The capital"
    few = styled(tiny, style="fewshot")
    answers = greedy_answers(few, [QUESTION, "Who wrote Hamlet?"], [12, 12])
    assert all("\n" not in a.text and a.text == first_line(a.raw) for a in answers)


@pytest.mark.parametrize("add_bos", [True, False])
def test_base_model_prompts_get_bos_and_bpe_word_starts(add_bos):
    tok = bpe_tokenizer(add_bos)
    lm = LoadedModel(model=None, tokenizer=tok, name="bpe", chat=False, prompting=Prompting("chat"))  # type: ignore[arg-type]
    assert lm.bos_text == ("<s>" if add_bos else "")
    assert lm.format_prompt(QUESTION) == ("<s>" if add_bos else "") + QUESTION  # no chat template: the raw question
    prompt_ids, answer_ids = lm.prompt_and_answer_ids(QUESTION, "Paris")
    assert (prompt_ids[0] == tok.bos_token_id) == add_bos
    assert answer_ids == tok(" Paris", add_special_tokens=False).input_ids
    assert answer_ids != tok("Paris", add_special_tokens=False).input_ids, "the word-start token is not the bare word's"
    assert tok.decode(answer_ids) == " Paris"
    few = dataclasses.replace(lm, prompting=Prompting("fewshot"))
    assert few.format_prompt(QUESTION) == ("<s>" if add_bos else "") + fewshot_prompt(QUESTION)
    assert few.prompt_and_answer_ids(QUESTION, "Paris")[1] == answer_ids
    zero = dataclasses.replace(lm, prompting=Prompting("zeroshot"))
    assert zero.format_prompt(QUESTION) == lm.format_prompt(QUESTION)
    assert zero.prompt_and_answer_ids(QUESTION, "Paris") == (prompt_ids, answer_ids)
