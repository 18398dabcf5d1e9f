"""``raydd export``: a distilled set as reference ``.pt`` tensors, a PNG ImageFolder or a Hugging Face dataset."""
