"""custom_monai.label"""
