"""custom_monai.inferers"""
