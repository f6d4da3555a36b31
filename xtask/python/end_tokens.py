"""The end-of-answer token ids of a HF model, as emh's tokenizer reads them:
the tokenizer's eos token and the generation config's eos ids."""


def end_tokens(tok, model):
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else (ids or [])
    return sorted(set(tok.convert_tokens_to_ids([tok.eos_token])) | set(ids))
