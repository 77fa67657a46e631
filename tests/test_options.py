"""The ready option files: valid, buildable with tiny shapes, and equal to the papers' settings."""
import glob
import os

import pytest
import torch

from conftest import REPO
from desra.config import finalize_options, load_yaml_file, validate_options
from desra.models import build_model

TRAIN_FILES = ['train_mse_x4.yml', 'train_ldl_x4.yml', 'demo_ldl_finetune.yml', 'tiny/gan_ldl.yml',
               'train_realesrnet_x4plus.yml', 'train_realesrgan_x4plus.yml', 'train_realworld_ldl_x4.yml']


@pytest.mark.parametrize('name', sorted(os.path.relpath(p, os.path.join(REPO, 'options'))
                                        for p in glob.glob(os.path.join(REPO, 'options', '**', '*.yml'),
                                                           recursive=True)))
def test_every_option_file_validates(name):
    opt = load_yaml_file(os.path.join(REPO, 'options', name))
    if os.path.basename(name).startswith('desra_pipeline'):
        from desra.config import check_schema
        from desra.pipelines.desra_loop import LOOP_SCHEMA

        check_schema(opt, LOOP_SCHEMA, '')
        assert os.path.isfile(os.path.join(REPO, opt['finetune']['options']))
    elif os.path.basename(name).startswith('detect'):
        from desra.detection.pipeline import validate_detect_options

        validate_detect_options(opt)
    elif os.path.basename(name).startswith('fuse'):
        from desra.pipelines.fuse import validate_fuse_options

        validate_fuse_options(opt)
    else:
        validate_options(opt, is_train='train' in opt)  # a training file has a train block


def test_ldl_x4_matches_ldl_md():
    opt = load_yaml_file(os.path.join(REPO, 'options', 'train_ldl_x4.yml'))
    assert opt['network_g'] == {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 23,
                                'num_grow_ch': 32}
    assert opt['network_d'] == {'type': 'VGGStyleDiscriminator', 'num_in_ch': 3, 'num_feat': 64, 'input_size': 128}
    assert opt['datasets']['train']['gt_size'] == 128 and opt['datasets']['train']['batch_size_per_gpu'] == 16
    t = opt['train']
    assert t['total_iter'] == 300000 and t['ema_decay'] == 0.999
    for key in ('optim_g', 'optim_d'):
        assert (t[key]['type'], t[key]['lr'], t[key]['betas']) == ('Adam', 1e-4, [0.9, 0.99])
    assert (t['pixel_opt']['type'], t['pixel_opt']['loss_weight']) == ('L1Loss', 1e-2)
    assert (t['artifacts_opt']['type'], t['artifacts_opt']['loss_weight']) == ('LDLArtifactLoss', 1.0)
    assert t['perceptual_opt']['layer_weights'] == {'conv1_2': 0.1, 'conv2_2': 0.1, 'conv3_4': 1, 'conv4_4': 1,
                                                    'conv5_4': 1}
    assert (t['perceptual_opt']['perceptual_weight'], t['perceptual_opt']['criterion']) == (1.0, 'l1')
    assert (t['gan_opt']['gan_type'], t['gan_opt']['loss_weight']) == ('vanilla', 5e-3)
    assert opt['model_type'] == 'ESRGANModel'  # relativistic GAN, as the ESRGAN model LDL builds on
    assert opt['path']['pretrain_network_g'].endswith('ESRGAN_PSNR_SRx4_DF2K_official-150ff491.pth')


@pytest.mark.parametrize('name', TRAIN_FILES)
def test_train_option_files_build_with_tiny_shapes(name, tiny_data):
    opt = load_yaml_file(os.path.join(REPO, 'options', name))
    opt['is_train'] = True
    opt['network_g'].update(num_feat=8, num_block=1, num_grow_ch=4)
    if 'network_d' in opt:
        opt['network_d']['num_feat'] = 8
    opt['path']['pretrain_network_g'] = None
    if 'perceptual_opt' in opt['train']:
        opt['train']['perceptual_opt']['weights'] = 'random'  # no VGG download in tests
    for ds in opt['datasets'].values():
        ds['dataroot_gt'], ds['dataroot_lq'] = os.path.join(tiny_data, 'HR'), os.path.join(tiny_data, 'LR')
    finalize_options(opt)
    model = build_model(opt, torch.device('cpu'))
    gt = opt['datasets']['train']['gt_size']
    gt = min(gt, 48) if opt['network_d' if 'network_d' in opt else 'network_g']['type'] != 'VGGStyleDiscriminator' \
        else gt
    model.feed_data({'lq': torch.rand(1, 3, gt // 4, gt // 4), 'gt': torch.rand(1, 3, gt, gt)})
    losses = model.optimize_parameters(1)
    assert all(torch.isfinite(v) for v in losses.values())
    expected = {'train_mse_x4.yml': {'l_pix'},
                'train_ldl_x4.yml': {'l_g_pix', 'l_g_artifacts', 'l_g_percep', 'l_g_gan', 'l_d_real', 'l_d_fake',
                                     'out_d_real', 'out_d_fake'}}
    if name in expected:
        assert set(losses) == expected[name]


def test_realworld_files_match_the_published_settings():
    """options/train_realesrnet_x4plus, train_realesrgan_x4plus, train_realworld_ldl_x4 = REALESRGAN.md / LDL.md."""
    net = load_yaml_file(os.path.join(REPO, 'options', 'train_realesrnet_x4plus.yml'))
    gan = load_yaml_file(os.path.join(REPO, 'options', 'train_realesrgan_x4plus.yml'))
    ldl = load_yaml_file(os.path.join(REPO, 'options', 'train_realworld_ldl_x4.yml'))
    assert (net['model_type'], gan['model_type'], ldl['model_type']) == ('RealESRNetModel', 'RealESRGANModel',
                                                                         'RealESRGANArtifactsDisModel')
    for opt in (net, gan, ldl):
        assert (opt['resize_prob'], opt['resize_range'], opt['noise_range'], opt['poisson_scale_range']) == (
            [0.2, 0.7, 0.1], [0.15, 1.5], [1, 30], [0.05, 3])
        assert (opt['gaussian_noise_prob'], opt['gray_noise_prob'], opt['jpeg_range'], opt['second_blur_prob']) == (
            0.5, 0.4, [30, 95], 0.8)
        assert (opt['resize_prob2'], opt['resize_range2'], opt['noise_range2'], opt['poisson_scale_range2'],
                opt['jpeg_range2']) == ([0.3, 0.4, 0.3], [0.3, 1.2], [1, 25], [0.05, 2.5], [30, 95])
        assert (opt['gt_size'], opt['queue_size'], opt['train']['ema_decay']) == (256, 180, 0.999)
        ds = opt['datasets']['train']
        assert ds['type'] == 'RealESRGANDataset' and ds['blur_kernel_size'] == ds['blur_kernel_size2'] == 21
        assert ds['kernel_prob'] == [0.45, 0.25, 0.12, 0.03, 0.12, 0.03] == ds['kernel_prob2']
        assert (ds['sinc_prob'], ds['blur_sigma'], ds['blur_sigma2'], ds['final_sinc_prob']) == (0.1, [0.2, 3],
                                                                                                  [0.2, 1.5], 0.8)
        assert (ds['betag_range'], ds['betap_range'], ds['use_hflip'], ds['use_rot']) == ([0.5, 4], [1, 2], True,
                                                                                          False)
    assert net['gt_usm'] is True and net['train']['optim_g']['lr'] == 2e-4 and net['train']['total_iter'] == 1000000
    assert net['path']['pretrain_network_g'].endswith('ESRGAN_SRx4_DF2KOST_official-ff704c30.pth')
    for opt, pix, batch in ((gan, 1.0, 12), (ldl, 1e-2, 4)):
        t = opt['train']
        assert (opt['l1_gt_usm'], opt['percep_gt_usm'], opt['gan_gt_usm']) == (True, True, False)
        assert (t['optim_g']['lr'], t['optim_d']['lr'], t['total_iter']) == (1e-4, 1e-4, 400000)
        assert (t['pixel_opt']['loss_weight'], t['gan_opt']['loss_weight']) == (pix, 0.1)
        assert t['perceptual_opt']['layer_weights'] == {'conv1_2': 0.1, 'conv2_2': 0.1, 'conv3_4': 1, 'conv4_4': 1,
                                                        'conv5_4': 1}
        assert opt['datasets']['train']['batch_size_per_gpu'] == batch
        assert opt['network_d'] == {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 64,
                                    'skip_connection': True}
        assert opt['path']['pretrain_network_g'].endswith('RealESRNet_x4plus.pth')
    assert ldl['train']['artifacts_opt'] == {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}
